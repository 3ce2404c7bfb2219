"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from tuneforge import MethodSpec, hookimpl


def apply(ctx, model):
    for param in model.parameters():
        param.requires_grad_(True)
    return model


@hookimpl
def tuneforge_methods():
    return [MethodSpec(name="full", description="Train every parameter of the model.", apply=apply)]
