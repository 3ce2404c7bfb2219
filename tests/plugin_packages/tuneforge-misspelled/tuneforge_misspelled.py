"""Test fixture: the hook is `tuneforge_method`, one letter short of `tuneforge_methods`.

pluggy alone would register nothing and say nothing; tuneforge lists the plugin as broken with a
did-you-mean.
"""

from tuneforge import MethodSpec, hookimpl


def apply(ctx, model):
    return model


@hookimpl
def tuneforge_method():
    return [MethodSpec(name="misspelled", description="Never registered: its hook name is wrong.", apply=apply)]
