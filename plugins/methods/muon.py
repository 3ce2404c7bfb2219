"""Muon: full (or freeze) tuning whose hidden-layer weight matrices are updated by Muon (momentum
orthogonalised by Newton-Schulz iterations, torch.optim.Muon), every other parameter by AdamW.

Selected by ``use_muon: true`` (LLaMA-Factory's flag) or ``finetuning_type: muon``. As in LLaMA-Factory,
Muon takes the 2-D weights of the decoder layers; the embeddings, the output head, norms and biases keep
AdamW (Muon is defined for matrices, and the embedding/head behave better with Adam). Both share the
learning rate and its schedule.
"""

from __future__ import annotations

from tuneforge import MethodSpec, hookimpl

from ._common import FREEZE_KEYS, base_tuning, full_or_freeze_optimizer_problems


def apply(ctx, model):
    return ctx.manager.method(base_tuning(ctx.config, "muon")).apply(ctx, model)


def split_parameters(model) -> tuple[list, list]:
    """(Muon's parameters, AdamW's parameters) among the trainable ones."""
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None and getattr(m, "weight", None) is not None}
    muon, adamw = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (muon if param.ndim == 2 and id(param) not in embeddings else adamw).append(param)
    return muon, adamw


def create_optimizer(ctx, model, args):
    import torch

    from ._optim import adam_kwargs
    from ._combined import CombinedOptimizer

    muon_params, adamw_params = split_parameters(model)
    inner = {"muon": torch.optim.Muon(muon_params, lr=args.learning_rate, weight_decay=args.weight_decay)}
    if adamw_params:
        inner["adamw"] = torch.optim.AdamW(adamw_params, **adam_kwargs(args))
    count = sum(p.numel() for p in muon_params)
    print(f"Muon: {len(muon_params)} weight matrices ({count:,} parameters) by Muon, "
          f"{len(adamw_params)} other tensors by AdamW")
    return CombinedOptimizer(inner)


def validate(config, plan) -> list[str]:
    problems = full_or_freeze_optimizer_problems(config, plan, "muon")
    if config.get("use_adam_mini"):
        problems.append("use_muon and use_adam_mini are two optimizers: choose one")
    return problems


@hookimpl
def tuneforge_methods():
    return [MethodSpec(
        name="muon",
        description="Muon: full/freeze tuning with Muon for the hidden weight matrices, AdamW for the rest (torch).",
        keys=FREEZE_KEYS,
        apply=apply,
        create_optimizer=create_optimizer,
        validate=validate,
        base_method=base_tuning,
        display_name="Muon",
        flag="use_muon",
    )]
