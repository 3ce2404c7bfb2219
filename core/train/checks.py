"""Config checks the training stages share, run by `tuneforge check` before anything loads (no torch here)."""

from __future__ import annotations


def evaluation_problems(config) -> list[str]:
    """Evaluation during training needs evaluation data; say so before a model is loaded."""
    strategy = config.get("eval_strategy")
    has_data = bool(config.get("val_size")) or bool(config.get("eval_dataset"))
    if strategy not in (None, "no") and not has_data:
        return [f"eval_strategy: {strategy} evaluates during training, but there is no evaluation data: "
                "set val_size (a fraction or a count of rows to hold out) or eval_dataset"]
    patience = config.get("early_stopping_steps")
    if patience is not None:
        if patience < 1:
            return [f"early_stopping_steps must be at least 1 (evaluations without improvement), got {patience}"]
        if strategy in (None, "no"):
            return ["early_stopping_steps stops when evaluations stop improving, but nothing is evaluated during "
                    "training: set eval_strategy: steps (with eval_steps) and val_size or eval_dataset"]
    return []


def distributed_problems(config) -> list[str]:
    """``deepspeed`` must name a readable ZeRO config and the package must be there; FSDP and DeepSpeed
    exclude each other. Checked before any process starts, so no rank fails alone."""
    import importlib.util
    import json
    from pathlib import Path

    value = config.get("deepspeed")
    problems: list[str] = []
    if not value:
        return problems
    if isinstance(value, str):
        path = Path(value)
        if not path.is_file():
            shipped = "examples/deepspeed/ds_z{0,2,3}_config.json (and *_offload_config.json)"
            return [f"{value} is not a file; point it at a DeepSpeed JSON config such as {shipped}"]
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            return [f"{path} is not valid JSON ({exc})"]
    if not isinstance(value, dict):
        return [f"must be a path to a JSON config or a mapping, got {type(value).__name__}"]
    stage = (value.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if config.get("fsdp"):
        problems.append("deepspeed and fsdp are both set: pick one engine (remove fsdp, or remove deepspeed)")
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("the deepspeed package is not installed: pip install deepspeed "
                        "(it needs a CUDA toolkit to build its ops; see docs/distributed.md)")
    return problems
