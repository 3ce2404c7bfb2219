"""Experiment tracking: the trackers are transformers' own (``report_to``: tensorboard, wandb, mlflow,
swanlab, ...); tuneforge adds LLaMA-Factory's ``use_swanlab`` keys and logs, with every run, the
resolved config (training_args.yaml) and the run manifest (versions, plugins, data digests), so a run
in a tracker says exactly how it was made.

Offline use, as the trackers document it: ``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI=file:./mlruns``
(mlflow's local file store), ``swanlab_mode: local``; tensorboard always writes local event files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .context import RunContext

RUN_FILES = ("training_args.yaml", "run_manifest.json")


def report_to(ctx: RunContext, requested) -> list[str] | str:
    """``report_to`` with swanlab added when ``use_swanlab`` asks for it (and its settings exported)."""
    config = ctx.config
    if not config.use_swanlab:
        return requested
    names = [requested] if isinstance(requested, str) else list(requested or [])
    names = [n for n in names if n not in ("none", None)]
    if "swanlab" not in names:
        names.append("swanlab")
    settings = {"SWANLAB_PROJECT": config.swanlab_project, "SWANLAB_WORKSPACE": config.swanlab_workspace,
                "SWANLAB_MODE": config.swanlab_mode, "SWANLAB_LOG_DIR": config.swanlab_logdir,
                "SWANLAB_API_KEY": config.swanlab_api_key}
    for variable, value in settings.items():
        if value:
            os.environ.setdefault(variable, str(value))
    if config.swanlab_run_name and not config.get("run_name"):
        os.environ.setdefault("SWANLAB_EXP_NAME", str(config.swanlab_run_name))
    return names


def run_record_callback(ctx: RunContext):
    """A TrainerCallback that hands the run files to each active tracker once training begins (after
    the trackers' own callbacks have opened their runs)."""
    from transformers import TrainerCallback

    class RunRecord(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            files = [ctx.output_dir / name for name in RUN_FILES if (ctx.output_dir / name).is_file()]
            trainer = ctx.extras.get("trainer")
            callbacks = trainer.callback_handler.callbacks if trainer is not None else []
            for callback in callbacks:
                record = _RECORDERS.get(type(callback).__name__)
                if record is not None:
                    try:
                        record(callback, files)
                    except Exception as exc:  # a tracker's hiccup must not stop training; say it
                        print(f"warning: could not log the run files to {type(callback).__name__}: {exc}")

    return RunRecord()


def _texts(files: list[Path]) -> dict[str, str]:
    return {f.name: f.read_text(encoding="utf-8") for f in files}


def _tensorboard(callback, files):
    writer = getattr(callback, "tb_writer", None)
    if writer is None:
        return
    for name, text in _texts(files).items():
        # markdown code block: tensorboard's text plugin renders it verbatim
        writer.add_text(f"tuneforge/{name}", "```\n" + text + "\n```", 0)
    writer.flush()


def _mlflow(callback, files):
    import mlflow

    if mlflow.active_run() is None:
        return
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="tuneforge")


def _wandb(callback, files):
    import wandb

    run = wandb.run
    if run is None:
        return
    texts = _texts(files)
    if "training_args.yaml" in texts:
        run.config.update({"tuneforge": yaml.safe_load(texts["training_args.yaml"])}, allow_val_change=True)
    for path in files:
        run.save(str(path), base_path=str(path.parent), policy="now")


def _swanlab(callback, files):
    import swanlab

    texts = _texts(files)
    update = {}
    if "training_args.yaml" in texts:
        update["tuneforge_config"] = yaml.safe_load(texts["training_args.yaml"])
    if "run_manifest.json" in texts:
        update["tuneforge_manifest"] = json.loads(texts["run_manifest.json"])
    swanlab.config.update(update)


_RECORDERS = {
    "TensorBoardCallback": _tensorboard,
    "MLflowCallback": _mlflow,
    "WandbCallback": _wandb,
    "SwanLabCallback": _swanlab,
}
