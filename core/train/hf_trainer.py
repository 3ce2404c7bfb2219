"""The Hugging Face Trainer set-up the stages share: arguments, the method's optimizer, resume,
a graceful Ctrl-C, and the output files.

What a resume restores (docs/training.md says the same to users): the model's trainable weights, the
optimizer state (including GaLore/APOLLO projectors and BAdam's block schedule), the LR scheduler, the
gradient scaler, the Python/NumPy/torch RNG states, the step/epoch counters and the position in the
data (batches already seen in the current epoch are skipped).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import yaml

from ..errors import TuneforgeError
from ..integrity import folder_problem
from ..ranks import is_main_process, world_size
from . import auto_gc, fused_loss, padding_free, speedups, tracking
from .context import RunContext
from .outputs import plot_loss, save_metrics, trainer_log_callback

#: Files a checkpoint-N folder must hold to be resumed from (trainer_state.json is written last).
CHECKPOINT_STATE = "trainer_state.json"
#: Checkpoints are written into OUTPUT_DIR/.checkpoint-in-progress/checkpoint-N, then renamed into place
#: (a name that neither ``checkpoint-*`` globs nor transformers' own checkpoint regex match).
CHECKPOINT_STAGING = ".checkpoint-in-progress"
#: What a checkpoint holds its weights in: a model, an adapter, their shard indexes, DeepSpeed/FSDP state.
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "global_step*", "pytorch_model_fsdp_*")


def training_arguments(ctx: RunContext, **overrides):
    from transformers import Seq2SeqTrainingArguments

    config = ctx.config
    kwargs = config.hf_training_args()
    kwargs["output_dir"] = str(ctx.output_dir)
    if config.warmup_ratio is not None and "warmup_steps" not in kwargs:
        kwargs["warmup_steps"] = float(config.warmup_ratio)  # transformers 5: a float below 1 is a ratio
    kwargs["report_to"] = tracking.report_to(ctx, kwargs.get("report_to", "none"))
    kwargs.setdefault("remove_unused_columns", False)
    # optim unset: transformers' default (adamw_torch_fused), as LLaMA-Factory runs; the fused step is also
    # the faster one on CPU (measured: full fine-tuning of the 27M model 1.05x tokens/s)
    # non-pad tokens seen, for tokens/s in trainer_log.jsonl
    kwargs.setdefault("include_num_input_tokens_seen", "non_padding")
    if config.disable_shuffling:
        kwargs.setdefault("train_sampling_strategy", "sequential")
    if config.early_stopping_steps is not None:
        kwargs.setdefault("metric_for_best_model", "eval_loss")  # what EarlyStoppingCallback watches
    if config.get("fsdp_transformer_layer_cls_to_wrap") and kwargs.get("fsdp"):
        _fsdp_layer_classes(config.fsdp_transformer_layer_cls_to_wrap, kwargs)
    padding_free.training_kwargs(ctx, kwargs)
    speedups.training_kwargs(ctx, kwargs)
    _gradient_checkpointing(ctx, kwargs)
    if not _has_accelerator():
        kwargs.setdefault("use_cpu", True)  # bf16 on CPU is fine; transformers refuses it without use_cpu
    kwargs["resume_from_checkpoint"] = None  # resolved by resume_checkpoint(); passed to train()
    kwargs.update(overrides)
    try:
        return Seq2SeqTrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise TuneforgeError(f"invalid training arguments: {exc}") from None


def _fsdp_layer_classes(value, kwargs: dict) -> None:
    """LLaMA-Factory's fsdp_transformer_layer_cls_to_wrap, which transformers 5 reads only from fsdp_config."""
    import json

    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if str(n).strip()]
    fsdp_config = kwargs.get("fsdp_config") or {}
    if isinstance(fsdp_config, str):
        fsdp_config = json.loads(Path(fsdp_config).read_text(encoding="utf-8"))
    fsdp_config = dict(fsdp_config)
    fsdp_config.setdefault("transformer_layer_cls_to_wrap", names)
    kwargs["fsdp_config"] = fsdp_config


def _gradient_checkpointing(ctx: RunContext, kwargs: dict) -> None:
    """Checkpoint activations as the config says, or, when it says nothing, as the planner chooses (auto_gc.py).

    The Hugging Face names (gradient_checkpointing, deprecated in transformers 5, and
    activation_checkpointing) win when set; use_reentrant_gc picks torch's checkpoint flavour.

    Under several processes DDP and reentrant checkpointing clash: a model that is not a bare
    PreTrainedModel (a PEFT wrapper: LoRA, QLoRA; a value head) gets ``find_unused_parameters=True``
    from the Trainer, and the reentrant recomputation then fires each parameter's ready hook twice
    ("marked as ready twice" at the first backward). The non-reentrant flavour (our default, and
    transformers 5's) has no such clash. When the user asks for the reentrant one, we do what
    LLaMA-Factory does for LoRA: ``ddp_find_unused_parameters: false`` unless set (every trainable
    parameter must then get a gradient each step, which holds for the causal-LM methods).
    """
    config = ctx.config
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in kwargs:
            kwargs.setdefault(new, kwargs.pop(old))
    if "activation_checkpointing" not in kwargs:
        supported = getattr(ctx.model, "supports_gradient_checkpointing", None)
        if supported is None:  # a PEFT wrapper: ask the model inside
            supported = getattr(getattr(ctx.model, "get_base_model", lambda: None)(), "supports_gradient_checkpointing", False)
        if auto_gc.user_chose(config):
            kwargs["activation_checkpointing"] = bool(ctx.training and supported and not config.disable_gradient_checkpointing)
        else:  # the planner decides: off when the run fits without it (auto_gc.py)
            kwargs["activation_checkpointing"] = auto_gc.decide(ctx, bool(supported))
    if kwargs["activation_checkpointing"]:
        kwargs.setdefault("activation_checkpointing_kwargs", {"use_reentrant": bool(config.use_reentrant_gc)})
        gc_kwargs = kwargs["activation_checkpointing_kwargs"]
        if isinstance(gc_kwargs, str):  # a JSON string on the command line, as transformers accepts it
            try:
                gc_kwargs = json.loads(gc_kwargs)
            except ValueError:
                gc_kwargs = {}
        # transformers turns empty kwargs into use_reentrant=False; torch's checkpoint() defaults to the
        # reentrant flavour when other kwargs come without use_reentrant
        passed = {k: v for k, v in gc_kwargs.items() if k not in ("every_n_layers", "offload")} if isinstance(gc_kwargs, dict) else {}
        reentrant = bool(passed.get("use_reentrant", True)) if passed else False
        if reentrant and world_size() > 1 and kwargs.get("ddp_find_unused_parameters") is None:
            kwargs["ddp_find_unused_parameters"] = False


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


# --- the trainer ----------------------------------------------------------------------------------------------

_TRAINER_CLASSES: dict[type, type] = {}


def method_trainer_class(base: type) -> type:
    """``base`` (transformers' Trainer or a subclass, e.g. one of TRL's) with the planned method's optimizer.

    A method whose ``create_optimizer(ctx, model, args)`` returns an optimizer (LoRA+, GaLore, APOLLO,
    BAdam) replaces the trainer's default one; ``None`` keeps the default.
    """
    if base not in _TRAINER_CLASSES:

        class MethodTrainer(base):
            tuneforge_ctx: RunContext | None = None
            _tuneforge_staging = False

            def _get_output_dir(self, trial):
                run_dir = super()._get_output_dir(trial)
                return os.path.join(run_dir, CHECKPOINT_STAGING) if self._tuneforge_staging else run_dir

            def _save_checkpoint(self, model, trial):
                save_checkpoint_atomically(self, trial, lambda: super(MethodTrainer, self)._save_checkpoint(model, trial))

            tuneforge_train_collator = None  # padding_free.py: training batches only; evaluation stays padded

            def get_train_dataloader(self):
                if self.tuneforge_train_collator is None:
                    return super().get_train_dataloader()
                padded, self.data_collator = self.data_collator, self.tuneforge_train_collator
                try:
                    return super().get_train_dataloader()
                finally:
                    self.data_collator = padded

            def create_optimizer(self, model=None):
                ctx = self.tuneforge_ctx
                make = ctx.plan.method.spec.create_optimizer if ctx is not None else None
                if self.optimizer is None and make is not None:
                    optimizer = make(ctx, self.model if model is None else model, self.args)
                    if optimizer is not None:
                        self.optimizer = optimizer
                return super().create_optimizer(model)

        MethodTrainer.__name__ = MethodTrainer.__qualname__ = f"Tuneforge{base.__name__}"
        _TRAINER_CLASSES[base] = MethodTrainer
    return _TRAINER_CLASSES[base]


def build_trainer(ctx: RunContext, data, base: type | None = None, **kwargs):
    """A trainer over the data pipeline's splits, with the method's optimizer and tuneforge's defaults."""
    if base is None:
        from transformers import Trainer as base
    kwargs.setdefault("args", training_arguments(ctx))
    model = kwargs.pop("model", ctx.model)  # a stage may train a wrapper of ctx.model (rm's value head)
    if ctx.config.early_stopping_steps is not None:
        from transformers import EarlyStoppingCallback

        patience = int(ctx.config.early_stopping_steps)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), EarlyStoppingCallback(early_stopping_patience=patience)]
    try:
        trainer = method_trainer_class(base)(
            model=model,
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=data.collator,
            processing_class=ctx.tokenizer,
            **kwargs,
        )
    except ValueError as exc:  # transformers' own checks of the arguments against the data
        raise TuneforgeError(f"the trainer refused this setup: {exc}") from None
    trainer.tuneforge_ctx = ctx
    if ctx.training:
        padding_free.apply(ctx, trainer, model, data.collator)
        fused_loss.apply(ctx, trainer, model, data.collator)
        speedups.apply(ctx, trainer)
    _say_when_fsdp_is_not_engaged(trainer)
    return trainer


def _say_when_fsdp_is_not_engaged(trainer) -> None:
    """An FSDP request (accelerate config or the ``fsdp`` key) that accelerate did not honour is said, not hidden."""
    import os

    requested = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or bool(trainer.args.fsdp)
    if requested and not getattr(trainer, "is_fsdp_enabled", False) and trainer.is_world_process_zero():
        print(f"warning: FSDP was requested, but accelerate enables FSDP only on GPU-family devices; on this machine the "
              f"{trainer.args.world_size} process(es) run as DDP: each holds the whole model (nothing is sharded)", flush=True)


# --- resume ---------------------------------------------------------------------------------------------------


def _checkpoints(output_dir: Path) -> list[Path]:
    return sorted(
        (p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it looks whole.

    Checked before resuming, because a damaged file otherwise fails deep inside safetensors or torch
    after the model has loaded: trainer_state.json parses, weights are there, every safetensors file is
    as long as its header says, every torch.save archive has its directory, every JSON parses, every
    shard an index lists exists. Headers only: milliseconds, whatever the checkpoint's size.
    """
    state = path / CHECKPOINT_STATE
    if not state.is_file():
        return f"{CHECKPOINT_STATE} is missing (the save was interrupted)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"{CHECKPOINT_STATE} is cut short (the save was interrupted)"
    if not any(p.name != "training_args.bin" for pattern in _WEIGHT_PATTERNS for p in path.glob(pattern)):
        return "holds no model weights (no *.safetensors or *.bin file)"
    return folder_problem(path)


def save_checkpoint_atomically(trainer, trial, save) -> None:
    """Run the Trainer's checkpoint save (``save``) into a staging folder, then rename it into place.

    A kill during the save leaves OUTPUT_DIR/.checkpoint-in-progress/checkpoint-N, which resume never
    looks at, instead of a checkpoint-N that looks complete. Every rank writes its own files (its RNG
    state, its DeepSpeed/FSDP shards) into the staging folder; the process that saves renames it once
    all have written (os.replace of a folder is atomic on one filesystem), then applies
    save_total_limit, which the Trainer applied to the staging folder.
    """
    from transformers.trainer_utils import rotate_checkpoints

    run_dir = Path(trainer._get_output_dir(trial=trial))
    name = f"checkpoint-{trainer.state.global_step}"
    staged, final = run_dir / CHECKPOINT_STAGING / name, run_dir / name
    saver = trainer.args.should_save
    if saver and staged.exists():
        shutil.rmtree(staged)  # left by a save that was killed
    trainer.accelerator.wait_for_everyone()
    trainer._tuneforge_staging = True
    try:
        save()
    finally:
        trainer._tuneforge_staging = False
    if trainer.state.best_model_checkpoint == str(staged):  # the Trainer saw the best one in the staging folder
        trainer.state.best_model_checkpoint = str(final)
        if saver:
            trainer.state.save_to_json(str(staged / CHECKPOINT_STATE))
    trainer.accelerator.wait_for_everyone()  # every rank's files are in staged
    if not saver or not staged.is_dir():  # save_on_each_node on a shared disk: another node renamed it
        return
    _fsync_tree(staged)
    if final.exists():  # the same step saved before: a damaged checkpoint skipped at resume, or an older run's
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_tree(run_dir, files=False)
    try:
        staged.parent.rmdir()
    except OSError:
        pass
    rotate_checkpoints(output_dir=str(run_dir), save_total_limit=trainer.args.save_total_limit,
                       best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)


def _fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush the folder's files (and the folder) to disk, so a rename never points at unwritten data
    after a power loss; a filesystem that cannot fsync a folder is left alone."""
    paths = [p for p in folder.rglob("*") if p.is_file()] if files else []
    for path in paths:
        with path.open("rb") as f:
            os.fsync(f.fileno())
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resume_checkpoint(ctx: RunContext) -> str | None:
    """resume_from_checkpoint if set, else the last complete checkpoint-N in output_dir unless overwrite_output_dir."""
    config = ctx.config
    if config.get("resume_from_checkpoint"):
        path = Path(str(config.resume_from_checkpoint))
        if not path.is_dir():
            raise TuneforgeError(f"resume_from_checkpoint: {path} is not a folder")
        problem = checkpoint_problem(path)
        if problem:
            raise TuneforgeError(f"resume_from_checkpoint: cannot resume from {path}: {problem}")
        return str(path)
    output_dir = ctx.output_dir
    if config.overwrite_output_dir or not output_dir.is_dir():
        return None
    damaged = []
    for checkpoint in reversed(_checkpoints(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if is_main_process():
                print(f"resuming from {checkpoint} (set overwrite_output_dir: true to start afresh)")
            return str(checkpoint)
        damaged.append(checkpoint.name)
        if is_main_process():
            print(f"warning: skipping {checkpoint}: {problem}")
    if damaged:  # starting afresh beside them would silently throw away the run they came from
        raise TuneforgeError(
            f"no checkpoint in {output_dir} can be resumed from ({', '.join(damaged)}: see the warnings above); "
            "set overwrite_output_dir: true to start afresh, or resume_from_checkpoint: a good checkpoint")
    return None


def _changes_since(ctx: RunContext, checkpoint: str) -> list[str]:
    """Settings and data that differ from the run that wrote the checkpoint (read from output_dir)."""
    out = []
    ignored = {"resume_from_checkpoint", "overwrite_output_dir", "max_steps", "num_train_epochs", "save_steps",
               "logging_steps", "output_dir", "report_to", "disable_tqdm", "save_total_limit", "eval_steps"}
    previous = ctx.output_dir / "training_args.yaml"
    if previous.is_file() and Path(checkpoint).parent.resolve() == ctx.output_dir.resolve():
        try:
            before = yaml.safe_load(previous.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            before = {}
        now = ctx.config.as_dict()
        for key in sorted((set(before) | set(now)) - ignored):
            if before.get(key) != now.get(key):
                out.append(f"{key}: {before.get(key)!r} -> {now.get(key)!r}")
    manifest = ctx.output_dir / "run_manifest.json"
    if manifest.is_file():
        try:
            old = {d.get("path"): d.get("sha256") for d in json.loads(manifest.read_text(encoding="utf-8")).get("datasets", [])}
        except ValueError:
            old = {}
        for digest in _dataset_digests(ctx):
            if digest.get("path") in old and old[digest["path"]] != digest.get("sha256"):
                out.append(f"data file {digest['path']} changed (the data position no longer means the same rows)")
    return out


def _last_evaluation(trainer) -> dict | None:
    """The metrics of an evaluation the trainer ran at its final step (no need to run it twice)."""
    history = trainer.state.log_history
    for record in reversed(history):
        if "eval_loss" in record:
            if record.get("step") == trainer.state.global_step:
                return {k: v for k, v in record.items() if k.startswith("eval_") or k == "epoch"}
            return None
    return None


def _remove_old_checkpoints(output_dir: Path) -> None:
    """overwrite_output_dir: the checkpoints of the run being overwritten must not be resumed later."""
    import shutil

    old = _checkpoints(output_dir)
    if old:
        print(f"overwrite_output_dir: removing {len(old)} checkpoint folder(s) of the previous run in {output_dir}")
        for path in old:
            shutil.rmtree(path, ignore_errors=True)


# --- run files ------------------------------------------------------------------------------------------------


def write_run_files(ctx: RunContext) -> None:
    """training_args.yaml (the resolved config) and run_manifest.json (versions, data, providers)."""
    out = ctx.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_args.yaml").write_text(yaml.safe_dump(ctx.config.as_dict(), sort_keys=False, allow_unicode=True))
    versions = {}
    packages = ["tuneforge", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "pluggy"]
    packages += [r.module for entry in ctx.plan.entries() for r in entry.spec.requires]
    for pkg in dict.fromkeys(packages):
        try:
            versions[pkg] = metadata.version(pkg.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    manifest = {
        "python": platform.python_version(),
        "versions": versions,
        "plan": [{"role": r, "name": n, "provider": p} for r, n, p in ctx.plan.describe()],
        "datasets": _dataset_digests(ctx),
        "trainable_parameters": ctx.extras.get("trainable_parameters"),
        "total_parameters": ctx.extras.get("total_parameters"),
    }
    (out / "run_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _dataset_digests(ctx: RunContext) -> list[dict]:
    return [_file_digest(d.attr.path) for d in ctx.plan.datasets + ctx.plan.eval_datasets]


def _file_digest(path: str) -> dict:
    import hashlib

    p = Path(path)
    if not p.is_file():
        return {"path": path}
    digest = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": path, "sha256": digest.hexdigest()}


# --- Ctrl-C ---------------------------------------------------------------------------------------------------


def _graceful_stop_callback():
    from transformers import TrainerCallback

    class GracefulStop(TrainerCallback):
        """First SIGINT (Ctrl-C) or SIGTERM: finish the step, save a checkpoint, stop. A second one: stop now."""

        def __init__(self):
            self.received: str | None = None
            self.received_at = 0.0
            self.previous: dict = {}

        def install(self) -> None:
            if threading.current_thread() is not threading.main_thread():
                return
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)

        def uninstall(self) -> None:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous = {}

        def _handle(self, signum, frame):
            if self.received is not None:
                # Under torchrun one Ctrl-C can arrive twice (from the terminal and forwarded by the
                # launcher): only a second press, not the echo of the first, stops without saving.
                if time.monotonic() - self.received_at < 1.0:
                    return
                self.uninstall()
                raise KeyboardInterrupt
            self.received = signal.Signals(signum).name
            self.received_at = time.monotonic()
            if is_main_process():
                print(f"\n{self.received}: finishing this step and saving a checkpoint; "
                      "press Ctrl-C again to stop at once without saving", file=sys.stderr, flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            stop = self.received is not None
            if args.world_size > 1:  # every process must stop at the same step
                import torch
                import torch.distributed as dist

                flag = torch.tensor([int(stop)], device=args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
            if stop:
                control.should_save = True
                control.should_training_stop = True
            return control

    return GracefulStop()


# --- train ----------------------------------------------------------------------------------------------------


def train_and_save(ctx: RunContext, trainer) -> dict:
    """Train (resuming when a checkpoint exists), save the model and every output file; return metrics."""
    log_callback = trainer_log_callback(ctx.output_dir)
    trainer.add_callback(log_callback)
    trainer.add_callback(tracking.run_record_callback(ctx))
    ctx.extras["trainer"] = trainer
    ctx.extras["is_main_process"] = trainer.is_world_process_zero()
    ctx.manager.hook.tuneforge_trainer_created(ctx=ctx, trainer=trainer)
    metrics: dict = {}
    if ctx.config.do_train or not ctx.config.is_set("do_train"):  # `tuneforge train` trains by default
        checkpoint = resume_checkpoint(ctx)
        if checkpoint is not None and trainer.is_world_process_zero():
            if trainer.args.save_only_model:
                print("warning: save_only_model checkpoints hold the weights only: the optimizer, scheduler and RNG "
                      "start afresh, so the resumed run will not match an uninterrupted one")
            for change in _changes_since(ctx, checkpoint):
                print(f"warning: changed since the checkpoint was written: {change}")
        if trainer.is_world_process_zero():
            if checkpoint is None and ctx.config.overwrite_output_dir:
                _remove_old_checkpoints(ctx.output_dir)
            shutil.rmtree(ctx.output_dir / CHECKPOINT_STAGING, ignore_errors=True)  # a save killed last time
            write_run_files(ctx)
        stopper = _graceful_stop_callback()
        trainer.add_callback(stopper)
        stopper.install()
        try:
            result = trainer.train(resume_from_checkpoint=checkpoint)
        finally:
            stopper.uninstall()
        if stopper.received is not None and trainer.state.global_step < trainer.state.max_steps:
            step = trainer.state.global_step
            if trainer.is_world_process_zero():
                print(f"stopped by {stopper.received} after step {step}; saved {ctx.output_dir / f'checkpoint-{step}'}. "
                      "Run the same command again to resume from it.", file=sys.stderr)
            raise KeyboardInterrupt
        trainer.save_model()
        train_metrics = dict(result.metrics)
        if ctx.config.include_effective_tokens_per_second and train_metrics.get("train_runtime"):
            tokens = trainer.state.num_input_tokens_seen - log_callback.first_tokens
            train_metrics["effective_tokens_per_sec"] = round(tokens / train_metrics["train_runtime"], 3)
        trainer.save_state()
        if trainer.is_world_process_zero():
            # The saved tokenizer carries the template training used, so inference renders the same text.
            ctx.template.apply_to_tokenizer(ctx.tokenizer)
            ctx.tokenizer.save_pretrained(ctx.output_dir)
            if getattr(ctx, "media", None) is not None:  # a VLM: its processor files too, as LLaMA-Factory saves them
                from ..data.media import save_processor_files

                save_processor_files(str(ctx.config.model_name_or_path), ctx.output_dir)
            save_metrics(ctx.output_dir, "train", train_metrics)
        metrics.update(train_metrics)
    if trainer.eval_dataset is not None and (ctx.config.get("do_eval") or ctx.config.get("val_size") or ctx.plan.eval_datasets):
        eval_metrics = _last_evaluation(trainer) or trainer.evaluate()
        if trainer.is_world_process_zero():
            save_metrics(ctx.output_dir, "eval", eval_metrics)
        metrics.update(eval_metrics)
    if ctx.config.plot_loss and trainer.is_world_process_zero():
        plot_loss(ctx.output_dir)
    return metrics
