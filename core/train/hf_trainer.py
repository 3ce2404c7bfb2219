"""The Hugging Face Trainer set-up the text stages share: arguments, resume, outputs."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import yaml

from ..errors import TuneforgeError
from .context import RunContext
from .outputs import TrainerLogCallback, plot_loss, save_metrics


def training_arguments(ctx: RunContext, **overrides):
    from transformers import Seq2SeqTrainingArguments

    config = ctx.config
    kwargs = config.hf_training_args()
    kwargs["output_dir"] = str(ctx.output_dir)
    if config.warmup_ratio is not None and "warmup_steps" not in kwargs:
        kwargs["warmup_steps"] = float(config.warmup_ratio)  # transformers 5: a float below 1 is a ratio
    kwargs.setdefault("report_to", "none")
    kwargs.setdefault("remove_unused_columns", False)
    kwargs.setdefault("optim", "adamw_torch")
    if not _has_accelerator():
        kwargs.setdefault("use_cpu", True)  # bf16 on CPU is fine; transformers refuses it without use_cpu
    kwargs["resume_from_checkpoint"] = None  # resolved by last_checkpoint(); passed to train()
    kwargs.update(overrides)
    try:
        return Seq2SeqTrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise TuneforgeError(f"invalid training arguments: {exc}") from None


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def resume_checkpoint(ctx: RunContext) -> str | None:
    """resume_from_checkpoint if set, else the last checkpoint-N in output_dir unless overwrite_output_dir."""
    config = ctx.config
    if config.get("resume_from_checkpoint"):
        path = str(config.resume_from_checkpoint)
        if not Path(path).is_dir():
            raise TuneforgeError(f"resume_from_checkpoint: {path} is not a folder")
        return path
    output_dir = ctx.output_dir
    if config.overwrite_output_dir or not output_dir.is_dir():
        return None
    checkpoints = sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    if checkpoints:
        print(f"resuming from {checkpoints[-1]} (set overwrite_output_dir: true to start afresh)")
        return str(checkpoints[-1])
    return None


def write_run_files(ctx: RunContext) -> None:
    """training_args.yaml (the resolved config) and run_manifest.json (versions, data, providers)."""
    out = ctx.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_args.yaml").write_text(yaml.safe_dump(ctx.config.as_dict(), sort_keys=False, allow_unicode=True))
    versions = {}
    for pkg in ("tuneforge", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "pluggy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    manifest = {
        "python": platform.python_version(),
        "versions": versions,
        "plan": [{"role": r, "name": n, "provider": p} for r, n, p in ctx.plan.describe()],
        "datasets": [_file_digest(d.attr.path) for d in ctx.plan.datasets + ctx.plan.eval_datasets],
    }
    (out / "run_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _file_digest(path: str) -> dict:
    import hashlib

    p = Path(path)
    if not p.is_file():
        return {"path": path}
    return {"path": path, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def train_and_save(ctx: RunContext, trainer) -> dict:
    """Train (resuming when a checkpoint exists), save the model and every output file; return metrics."""
    trainer.add_callback(TrainerLogCallback(ctx.output_dir))
    ctx.manager.hook.tuneforge_trainer_created(ctx=ctx, trainer=trainer)
    metrics: dict = {}
    if ctx.config.do_train or not ctx.config.is_set("do_train"):  # `tuneforge train` trains by default
        if trainer.is_world_process_zero():
            write_run_files(ctx)
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(ctx))
        trainer.save_model()
        trainer.save_state()
        if trainer.is_world_process_zero():
            ctx.tokenizer.save_pretrained(ctx.output_dir)
            save_metrics(ctx.output_dir, "train", result.metrics)
        metrics.update(result.metrics)
    if trainer.eval_dataset is not None and (ctx.config.get("do_eval") or ctx.config.get("val_size")):
        eval_metrics = trainer.evaluate()
        if trainer.is_world_process_zero():
            save_metrics(ctx.output_dir, "eval", eval_metrics)
        metrics.update(eval_metrics)
    if ctx.config.plot_loss and trainer.is_world_process_zero():
        plot_loss(ctx.output_dir)
    return metrics
