"""APOLLO: full (or freeze) tuning with an SGD-like memory footprint: AdamW whose update is scaled by
statistics of a low-rank (random or SVD) projection of the gradient (apollo-torch).

Selected by ``finetuning_type: apollo`` or LLaMA-Factory's ``use_apollo: true``; composes with
``finetuning_type`` exactly as GaLore does (full by default, or freeze).
"""

from __future__ import annotations

from tuneforge import ConfigKey, MethodSpec, Requirement, hookimpl

from ._common import FREEZE_KEYS, base_tuning, projected_state, projection_problems

KEYS = (
    ConfigKey("use_apollo", bool, False, "Select APOLLO (LLaMA-Factory's flag; same as finetuning_type: apollo)."),
    ConfigKey("apollo_target", (str, list), "all",
              "Linear layers APOLLO scales: 'all' (every linear but the output head) or a comma list."),
    ConfigKey("apollo_rank", int, 16, "Rank of the auxiliary low-rank space."),
    ConfigKey("apollo_update_interval", int, 200, "Steps between renewing the projection.", min=1),
    ConfigKey("apollo_scale", float, 32.0, "Scale of the update."),
    ConfigKey("apollo_proj", str, "random", "Projection: random or svd.", choices=("random", "svd")),
    ConfigKey("apollo_proj_type", str, "std", "Projection side.", choices=("std", "right", "left")),
    ConfigKey("apollo_scale_type", str, "channel", "Scaling granularity.", choices=("channel", "tensor")),
    ConfigKey("apollo_layerwise", bool, False,
              "Step each layer during backward to save memory (no gradient accumulation, one process)."),
    ConfigKey("apollo_scale_front", bool, False, "Apply the norm-growth limiter before gradient scaling."),
) + FREEZE_KEYS

OPTIMS = ("adamw_torch", "adamw_torch_fused")


def apply(ctx, model):
    return ctx.manager.method(base_tuning(ctx.config, "apollo")).apply(ctx, model)


def create_optimizer(ctx, model, args):
    from apollo_torch import APOLLOAdamW
    from apollo_torch.random_projector import GradientProjector
    from apollo_torch.svd_projector import GaLoreProjector

    from ._optim import adam_kwargs, projected_optimizer, resumable

    config = ctx.config
    settings = {
        "rank": config.apollo_rank,
        "proj": config.apollo_proj,
        "proj_type": config.apollo_proj_type,
        "update_proj_gap": config.apollo_update_interval,
        "scale": config.apollo_scale,
        "scale_type": config.apollo_scale_type,
    }
    optimizer_cls = resumable(APOLLOAdamW, {"GradientProjector": GradientProjector, "GaLoreProjector": GaLoreProjector},
                              "APOLLOAdamW")
    # scale_front is a constructor argument of APOLLOAdamW (LLaMA-Factory passes it in the group, where it is ignored)
    kwargs = {**adam_kwargs(args), "scale_front": config.apollo_scale_front}
    label = f"APOLLO ({config.apollo_proj} projection, rank {config.apollo_rank}, scale {config.apollo_scale:g})"
    return projected_optimizer(model, args, config, "apollo", label, optimizer_cls, kwargs, settings, "")


def plan_optimizer_state(shape, config, trainable, per_param: int, optimizer: str):
    rank = int(config.get("apollo_rank") or 16)
    if config.get("apollo_proj") == "random" and config.get("apollo_scale_type") == "tensor":
        rank = 1
    return projected_state(shape, config, "apollo", "APOLLO", trainable, per_param, optimizer, rank)


def validate(config, plan) -> list[str]:
    return projection_problems(config, plan, "apollo", "APOLLO", OPTIMS)


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="apollo",
            description="APOLLO: full/freeze tuning with a memory-light AdamW scaled in a low-rank space (apollo-torch).",
            keys=KEYS,
            requires=(Requirement("apollo_torch", "pip install 'tuneforge[optim]'"),),
            apply=apply,
            create_optimizer=create_optimizer,
            validate=validate,
            base_method=base_tuning,
            plan_optimizer_state=plan_optimizer_state,
            display_name="APOLLO",
            flag="use_apollo",
        )
    ]
