"""Test fixture: a method whose validate() has a bug: it compares its key with a number without
handling the key's default, None, so it raises TypeError unless the config sets the key."""

from tuneforge import ConfigKey, MethodSpec, hookimpl


def apply(ctx, model):
    return model


def validate(config, plan) -> list[str]:
    if config.raisingvalidate_limit > 4:  # TypeError when unset: None > 4
        return ["raisingvalidate_limit must be 4 or less"]
    return []


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="raisingvalidate",
            description="Trains nothing; its validate() raises when raisingvalidate_limit is unset.",
            keys=(ConfigKey("raisingvalidate_limit", int, None, "A limit the buggy validator compares with 4."),),
            apply=apply,
            validate=validate,
        )
    ]
