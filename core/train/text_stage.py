"""What pt and sft share: build features, a padding collator and a Trainer, then train."""

from __future__ import annotations

from ..data.loading import load_examples
from ..data.template import IGNORE_INDEX
from ..data.tokenize import split_eval
from .context import RunContext
from .hf_trainer import train_and_save, training_arguments


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


def run_text_stage(ctx: RunContext, featurize) -> dict:
    """``featurize(ctx, examples)`` turns converted examples into input_ids/attention_mask/labels rows."""
    from transformers import Trainer

    config = ctx.config
    train = featurize(ctx, load_examples(ctx, ctx.plan.datasets))
    evaluation = featurize(ctx, load_examples(ctx, ctx.plan.eval_datasets)) if ctx.plan.eval_datasets else []
    if not evaluation and config.val_size:
        train, evaluation = split_eval(train, config.val_size, config.seed)
    print(f"training rows: {len(train)}" + (f", evaluation rows: {len(evaluation)}" if evaluation else ""))
    args = training_arguments(ctx)
    trainer = Trainer(
        model=ctx.model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation or None,
        data_collator=PadCollator(ctx.tokenizer.pad_token_id),
        processing_class=ctx.tokenizer,
    )
    return train_and_save(ctx, trainer)
