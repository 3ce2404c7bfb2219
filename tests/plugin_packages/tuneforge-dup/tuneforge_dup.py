"""Test fixture: registers a method called 'lora', which the built-in plugins already provide."""

from tuneforge import MethodSpec, hookimpl


def apply(ctx, model):
    return model


@hookimpl
def tuneforge_methods():
    return [MethodSpec(name="lora", description="A second 'lora' that clashes with the built-in one.", apply=apply)]
