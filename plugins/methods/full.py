"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from tuneforge import MethodSpec, hookimpl

from ._common import lora_only_problems, plan_full


def apply(ctx, model):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def validate(config, plan) -> list[str]:
    return lora_only_problems(config, "full")


@hookimpl
def tuneforge_methods():
    return [MethodSpec(name="full", description="Train every parameter of the model.", apply=apply, validate=validate,
                       plan_trainable=plan_full)]
