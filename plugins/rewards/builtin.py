"""Built-in reward functions for the stages that learn from scored generations (grpo, ppo).

Each scores a batch of completions with ``score(ctx, prompts, completions, **columns)`` and returns
one float per completion. They read text only (the completion as decoded, special tokens dropped),
so they work with any model; ``length`` also uses ``ctx.tokenizer`` to count tokens. ``columns``
carries per-row dataset fields: ``reference`` is the dataset's own reply ("" when the row has none).

- ``contains``: 1.0 when the completion contains ``reward_contains_text``, else 0.0;
- ``length``: peaks at 1.0 for ``reward_target_length`` tokens, falling linearly to 0.0 at none and at
  twice the target: it rewards answers of about the wanted size, neither empty nor rambling;
- ``think_format``: 1.0 when the completion is one ``<think>...</think>`` block followed by a non-empty
  answer (the layout reasoning models are trained to), else 0.0;
- ``accuracy``: 1.0 when the completion's final answer equals the final answer of ``reference``
  after normalisation (case, spacing, surrounding punctuation, thousands separators; numbers compare
  by value), else 0.0.
"""

from __future__ import annotations

import re
from decimal import Decimal

from tuneforge import ConfigKey, RewardFunctionSpec, hookimpl

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# --- contains ------------------------------------------------------------------------------------


def score_contains(ctx, prompts, completions, **columns) -> list[float]:
    text = ctx.config.reward_contains_text
    return [1.0 if text in completion else 0.0 for completion in completions]


def validate_contains(config, plan) -> list[str]:
    if not config.reward_contains_text:
        return ["reward_contains_text is not set: name the text a completion must contain to score 1.0"]
    return []


# --- length --------------------------------------------------------------------------------------


def score_length(ctx, prompts, completions, **columns) -> list[float]:
    target = ctx.config.reward_target_length
    counts = [len(ids) for ids in ctx.tokenizer(list(completions), add_special_tokens=False)["input_ids"]] if completions else []
    return [max(0.0, 1.0 - abs(count - target) / target) for count in counts]


def validate_length(config, plan) -> list[str]:
    target = config.reward_target_length
    if target is None or target <= 0:
        return [f"reward_target_length must be a positive number of tokens, not {target}"]
    return []


# --- think_format --------------------------------------------------------------------------------

_THINK_THEN_ANSWER = re.compile(r"\s*<think>(?:(?!<think>|</think>).)*</think>\s*\S", re.S)


def follows_think_format(completion: str, prompt: str = "") -> bool:
    """One ``<think>...</think>`` block, then an answer, and no other think tag.

    Some templates end the prompt with ``<think>`` so the model starts inside the block; the tag is
    then counted as written by the model.
    """
    if prompt.rstrip().endswith(THINK_OPEN) and not completion.lstrip().startswith(THINK_OPEN):
        completion = THINK_OPEN + completion
    match = _THINK_THEN_ANSWER.match(completion)
    return match is not None and THINK_OPEN not in completion[match.end():] and THINK_CLOSE not in completion[match.end():]


def score_think_format(ctx, prompts, completions, **columns) -> list[float]:
    return [1.0 if follows_think_format(c, p) else 0.0 for p, c in zip(prompts, completions)]


# --- accuracy ------------------------------------------------------------------------------------

_BOXED = "\\boxed{"
_ANSWER_LINE = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer(?:\s+is\s*[:：]?|\s*[:：])\s*(.+?)\s*$", re.I | re.M)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?")


def final_answer(text: str) -> str:
    """The part of a reply that states its answer: after the last ``</think>``, then the last
    ``\\boxed{...}``, else what follows a GSM8K-style ``####``, else the last ``Answer: ...`` line,
    else the whole reply."""
    text = text.rsplit(THINK_CLOSE, 1)[-1]
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[-1]
    lines = _ANSWER_LINE.findall(text)
    return lines[-1] if lines else text


def _last_boxed(text: str) -> str | None:
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def normalize_answer(answer: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or quotes, no thousands separators,
    and numbers in one canonical form (``3.50`` and ``3.5`` are the same answer)."""
    text = " ".join(answer.split()).lower()
    text = text.strip(" ,;:!?'\"`$()[]").rstrip(". ")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    if _NUMBER.fullmatch(text):
        value = Decimal(text).normalize()  # exact: no float rounding of long integers
        return format(value if value else Decimal(0), "f")  # and -0 is 0
    return text


def score_accuracy(ctx, prompts, completions, reference=None, **columns) -> list[float]:
    references = reference if reference is not None else [""] * len(completions)
    scores = []
    for completion, ref in zip(completions, references):
        wanted = normalize_answer(final_answer(ref or ""))
        scores.append(1.0 if wanted and normalize_answer(final_answer(completion)) == wanted else 0.0)
    return scores


@hookimpl
def tuneforge_reward_functions():
    return [
        RewardFunctionSpec(
            name="contains",
            description="1.0 when the completion contains reward_contains_text, else 0.0.",
            keys=(ConfigKey("reward_contains_text", str, None,
                            "reward function 'contains': the text (case-sensitive) a completion must contain to score 1.0."),),
            score=score_contains,
            validate=validate_contains,
        ),
        RewardFunctionSpec(
            name="length",
            description="1.0 at reward_target_length tokens, falling linearly to 0.0 at none and at twice the target.",
            keys=(ConfigKey("reward_target_length", int, 128,
                            "reward function 'length': the completion length in tokens that scores 1.0."),),
            score=score_length,
            validate=validate_length,
        ),
        RewardFunctionSpec(
            name="think_format",
            description="1.0 when the completion is <think>...</think> followed by an answer, else 0.0.",
            score=score_think_format,
        ),
        RewardFunctionSpec(
            name="accuracy",
            description="1.0 when the completion's final answer equals the dataset reply's (normalised), else 0.0.",
            score=score_accuracy,
        ),
    ]
