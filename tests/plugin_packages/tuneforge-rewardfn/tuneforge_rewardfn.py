"""char_share: reward a completion by the share of its characters drawn from a chosen set.

With the default set (the ten digits) it teaches a model to answer in numbers. It is also a reward
that even a randomly initialised model can learn within a few steps: some of the tokens it samples
at random already contain digits, so the completions of every group score differently.
"""

from __future__ import annotations

from tuneforge import ConfigKey, RewardFunctionSpec, hookimpl

KEYS = (
    ConfigKey("char_share_characters", str, "0123456789",
              "The characters that count; spaces and line breaks never count, in the share or in the total."),
)


def score(ctx, prompts, completions, **columns) -> list[float]:
    wanted = set(ctx.config.char_share_characters)
    scores = []
    for completion in completions:
        visible = [c for c in completion if not c.isspace()]
        scores.append(sum(c in wanted for c in visible) / len(visible) if visible else 0.0)
    return scores


def validate(config, plan) -> list[str]:
    if not (config.char_share_characters or "").strip():
        return ["char_share_characters must name at least one character that is not a space"]
    return []


@hookimpl
def tuneforge_reward_functions():
    return [
        RewardFunctionSpec(
            name="char_share",
            description="Share of the completion's non-space characters that are in char_share_characters.",
            keys=KEYS,
            score=score,
            validate=validate,
        )
    ]
