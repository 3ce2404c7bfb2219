"""Build what a stage trains on: examples -> features (ids, labels) -> train/eval splits + collator.

Stages call :func:`build_datasets` with the kind of rows they consume; everything about files,
formats, templates, truncation, packing and caching stays behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .loading import load_examples
from .template import IGNORE_INDEX
from .tokenize import pretrain_features, split_eval, supervised_features


@dataclass
class DatasetSplits:
    train: Any
    eval: Any  # None when there is no evaluation data
    collator: Any


class PadCollator:
    """Right-pads input_ids/attention_mask/labels of a batch to its longest row."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_token_id] * pad)
            batch["attention_mask"].append(f["attention_mask"] + [0] * pad)
            batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _featurize(ctx, kind: str, examples: list[dict]) -> list[dict]:
    config = ctx.config
    if kind == "text":
        return pretrain_features(examples, ctx.tokenizer, cutoff_len=config.cutoff_len)
    if kind == "supervised":
        return supervised_features(
            examples, ctx.template, ctx.tokenizer,
            cutoff_len=config.cutoff_len, train_on_prompt=config.train_on_prompt, default_system=config.default_system,
        )
    raise ValueError(f"no featurizer for data kind '{kind}'")


def build_datasets(ctx, kind: str) -> DatasetSplits:
    """Train and eval features for ``kind`` ("text" or "supervised"), with val_size held out."""
    config = ctx.config
    train = _featurize(ctx, kind, load_examples(ctx, ctx.plan.datasets))
    evaluation = _featurize(ctx, kind, load_examples(ctx, ctx.plan.eval_datasets)) if ctx.plan.eval_datasets else []
    if not evaluation and config.val_size:
        train, evaluation = split_eval(train, config.val_size, config.seed)
    print(f"training rows: {len(train)}" + (f", evaluation rows: {len(evaluation)}" if evaluation else ""))
    return DatasetSplits(train, evaluation or None, PadCollator(ctx.tokenizer.pad_token_id))
