"""What pt and sft share: a Hugging Face Trainer over the data pipeline's features."""

from __future__ import annotations

from ..data.dataset import build_datasets
from .context import RunContext
from .hf_trainer import build_trainer, train_and_save


def run_text_stage(ctx: RunContext, kind: str, **trainer_kwargs) -> dict:
    """``trainer_kwargs`` go to build_trainer (``base``, ``compute_loss_func``: a stage's own loss)."""
    data = build_datasets(ctx, kind)
    return train_and_save(ctx, build_trainer(ctx, data, **trainer_kwargs))
