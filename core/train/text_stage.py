"""What pt and sft share: a Hugging Face Trainer over the data pipeline's features."""

from __future__ import annotations

from ..data.dataset import build_datasets
from .context import RunContext
from .hf_trainer import train_and_save, training_arguments


def run_text_stage(ctx: RunContext, kind: str) -> dict:
    from transformers import Trainer

    data = build_datasets(ctx, kind)
    trainer = Trainer(
        model=ctx.model,
        args=training_arguments(ctx),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=ctx.tokenizer,
    )
    return train_and_save(ctx, trainer)
