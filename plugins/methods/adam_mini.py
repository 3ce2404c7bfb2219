"""Adam-mini: full (or freeze) tuning with the Adam-mini optimizer (package adam-mini), which keeps one
second-moment value per parameter block (per attention head, per output neuron) instead of one per
weight: about half of AdamW's optimizer memory.

Selected by ``use_adam_mini: true`` (LLaMA-Factory's flag) or ``finetuning_type: adam_mini``. The blocks
follow the model's hidden size and attention heads, read from its config, as LLaMA-Factory passes them.
"""

from __future__ import annotations

from tuneforge import MethodSpec, Requirement, hookimpl

from ._common import FREEZE_KEYS, base_tuning, full_or_freeze_optimizer_problems


def apply(ctx, model):
    return ctx.manager.method(base_tuning(ctx.config, "adam_mini")).apply(ctx, model)


def create_optimizer(ctx, model, args):
    from adam_mini import Adam_mini

    config = model.config
    heads = getattr(config, "num_attention_heads", None) or 1
    optimizer = Adam_mini(
        named_parameters=[(n, p) for n, p in model.named_parameters() if p.requires_grad],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        model_sharding=False,
        dim=getattr(config, "hidden_size", None) or 1,
        n_heads=heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        verbose=False,
    )
    print("Adam-mini: one second moment per block (attention heads, output neurons) instead of per weight")
    return optimizer


def validate(config, plan) -> list[str]:
    problems = full_or_freeze_optimizer_problems(config, plan, "adam_mini")
    return problems


@hookimpl
def tuneforge_methods():
    return [MethodSpec(
        name="adam_mini",
        description="Adam-mini: full/freeze tuning with the Adam-mini optimizer (half of AdamW's optimizer memory).",
        keys=FREEZE_KEYS,
        requires=(Requirement("adam_mini", "pip install adam-mini (or 'tuneforge[optim]')"),),
        apply=apply,
        create_optimizer=create_optimizer,
        validate=validate,
        base_method=base_tuning,
        display_name="Adam-mini",
        flag="use_adam_mini",
    )]
