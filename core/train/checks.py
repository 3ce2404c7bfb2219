"""Config checks the training stages share, run by `tuneforge check` before anything loads (no torch here)."""

from __future__ import annotations


def evaluation_problems(config) -> list[str]:
    """Evaluation during training needs evaluation data; say so before a model is loaded."""
    strategy = config.get("eval_strategy")
    has_data = bool(config.get("val_size")) or bool(config.get("eval_dataset"))
    if strategy not in (None, "no") and not has_data:
        return [f"eval_strategy: {strategy} evaluates during training, but there is no evaluation data: "
                "set val_size (a fraction or a count of rows to hold out) or eval_dataset"]
    return []
