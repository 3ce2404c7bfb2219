"""Turn converted examples into model inputs for the stages that train on text."""

from __future__ import annotations

from .template import IGNORE_INDEX


def supervised_features(examples: list[dict], template, tokenizer, *, cutoff_len: int, train_on_prompt: bool, default_system: str | None) -> list[dict]:
    features = []
    for example in examples:
        system = example.get("system") or default_system
        input_ids, labels = template.encode_supervised(tokenizer, example["messages"], system, cutoff_len, train_on_prompt)
        if any(label != IGNORE_INDEX for label in labels):
            features.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
    return features


def pretrain_features(examples: list[dict], tokenizer, *, cutoff_len: int) -> list[dict]:
    """Concatenate every text (each followed by EOS) and cut it into blocks of cutoff_len tokens."""
    stream: list[int] = []
    for example in examples:
        text = example.get("text")
        if text is None:
            text = "\n".join(m["content"] for m in example["messages"])
        stream += tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    blocks = [stream[i : i + cutoff_len] for i in range(0, len(stream), cutoff_len)]
    blocks = [b for b in blocks if len(b) == cutoff_len] or blocks[:1]
    return [{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks]


def split_eval(features: list[dict], val_size: float | int, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out val_size (a fraction below 1, or a row count) for evaluation, deterministically."""
    if not val_size:
        return features, []
    import random

    count = int(round(len(features) * val_size)) if val_size < 1 else int(val_size)
    count = max(1, min(count, len(features) - 1))
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [f for i, f in enumerate(features) if i not in held], [f for i, f in enumerate(features) if i in held]
