"""GaLore: full (or freeze) tuning whose optimizer keeps Adam's moments in a low-rank projection of
each targeted weight's gradient (galore-torch).

Selected by ``finetuning_type: galore`` or, as in LLaMA-Factory, by ``use_galore: true``. What trains
follows ``finetuning_type``: ``full`` (or unset) trains every parameter, ``freeze`` trains freeze
tuning's layers; only the targeted linear weights get the low-rank projection, every other trainable
parameter gets plain AdamW. ``finetuning_type: lora`` with ``use_galore`` is an error, as in LLaMA-Factory.
"""

from __future__ import annotations

from tuneforge import ConfigKey, MethodSpec, Requirement, hookimpl

from ._common import FREEZE_KEYS, base_tuning, projected_state, projection_problems

KEYS = (
    ConfigKey("use_galore", bool, False, "Select GaLore (LLaMA-Factory's flag; same as finetuning_type: galore)."),
    ConfigKey("galore_target", (str, list), "all",
              "Linear layers whose gradients are projected: 'all' (every linear but the output head) or a comma list."),
    ConfigKey("galore_rank", int, 16, "Rank of the gradient projection."),
    ConfigKey("galore_update_interval", int, 200, "Steps between recomputing the projection (SVD).", min=1),
    ConfigKey("galore_scale", float, 2.0, "Scale of the projected-back update."),
    ConfigKey("galore_proj_type", str, "std", "Projection side.", choices=("std", "reverse_std", "right", "left", "full")),
    ConfigKey("galore_layerwise", bool, False,
              "Step each layer during backward to save memory (no gradient accumulation, one process)."),
) + FREEZE_KEYS  # use_galore composes with finetuning_type: freeze

#: Hugging Face `optim` -> galore-torch class name.
OPTIMIZERS = {
    "adamw_torch": "GaLoreAdamW",
    "adamw_torch_fused": "GaLoreAdamW",
    "adamw_8bit": "GaLoreAdamW8bit",
    "adamw_bnb_8bit": "GaLoreAdamW8bit",
    "paged_adamw_8bit": "GaLoreAdamW8bit",
    "adafactor": "GaLoreAdafactor",
}


def apply(ctx, model):
    return ctx.manager.method(base_tuning(ctx.config, "galore")).apply(ctx, model)


def create_optimizer(ctx, model, args):
    import galore_torch
    from galore_torch.galore_projector import GaLoreProjector

    from ._optim import adam_kwargs, projected_optimizer, resumable

    config = ctx.config
    settings = {
        "rank": config.galore_rank,
        "update_proj_gap": config.galore_update_interval,
        "scale": config.galore_scale,
        "proj_type": config.galore_proj_type,
    }
    optimizer_cls = resumable(getattr(galore_torch, OPTIMIZERS[args.optim]), {"GaLoreProjector": GaLoreProjector},
                              OPTIMIZERS[args.optim])
    if args.optim == "adafactor":
        kwargs = {"lr": args.learning_rate, "scale_parameter": False, "relative_step": False}
    else:
        kwargs = adam_kwargs(args)
        if OPTIMIZERS[args.optim] == "GaLoreAdamW":
            kwargs["no_deprecation_warning"] = True
    detail = f"projected to rank {config.galore_rank}, projection renewed every {config.galore_update_interval} steps"
    return projected_optimizer(model, args, config, "galore", f"GaLore ({optimizer_cls.__name__})", optimizer_cls, kwargs, settings, detail)


def plan_optimizer_state(shape, config, trainable, per_param: int, optimizer: str):
    rank = int(config.get("galore_rank") or 16)
    return projected_state(shape, config, "galore", "GaLore", trainable, per_param, optimizer, rank)


def validate(config, plan) -> list[str]:
    return projection_problems(config, plan, "galore", "GaLore", OPTIMIZERS)


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="galore",
            description="GaLore: full/freeze tuning with gradient low-rank projection in the optimizer (galore-torch).",
            keys=KEYS,
            requires=(Requirement("galore_torch", "pip install 'tuneforge[optim]'"),),
            apply=apply,
            create_optimizer=create_optimizer,
            validate=validate,
            base_method=base_tuning,
            plan_optimizer_state=plan_optimizer_state,
            display_name="GaLore",
            flag="use_galore",
        )
    ]
