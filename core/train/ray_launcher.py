"""Ray Train: ``USE_RAY=1 tuneforge train CONFIG`` runs the training on Ray workers, as llamafactory-cli does.

LLaMA-Factory's keys shape the run: ``ray_num_workers`` workers, each with ``resources_per_worker``
(default: one GPU when the Ray cluster has GPUs, else one CPU), placed by ``placement_strategy``;
``ray_init_kwargs`` go to ``ray.init`` (an address, a runtime_env, ...); Ray's own record of the run
(its result and every checkpoint the run saves) goes to ``ray_storage_path/ray_run_name``, on
``ray_storage_filesystem`` (s3, gs or gcs) when set. Ray Train starts the workers and their process
group (NCCL on GPUs, gloo on CPUs); each worker runs tuneforge's normal training, so the outputs land
in ``output_dir`` as in any other run (written by global rank 0).

Checked before anything starts (no Ray or torch import here): Ray installed, the keys' values, and no
torchrun variable that Ray would leave unused.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from ..errors import Problem
from ..hookspecs import hookimpl

TRUE = ("1", "true", "y", "yes", "on")
PLACEMENTS = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
FILESYSTEMS = ("s3", "gs", "gcs")
INSTALL = "pip install 'tuneforge[ray]' (Ray Train: pip install 'ray[train]==2.60.*')"
#: LLaMA-Factory's Ray keys; they act only with USE_RAY=1 (there as here).
RAY_KEYS = ("ray_run_name", "ray_storage_path", "ray_storage_filesystem", "ray_num_workers",
            "resources_per_worker", "placement_strategy", "ray_init_kwargs")
#: torchrun's variables: Ray starts the workers itself, so with USE_RAY they would do nothing.
TORCHRUN_VARIABLES = ("FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "NODE_RANK")


def use_ray(env=None) -> bool:
    return str((os.environ if env is None else env).get("USE_RAY", "0")).strip().lower() in TRUE


def _mapping(config, key: str, problems: list[Problem]) -> dict | None:
    """A dict, or a JSON object in a string (LLaMA-Factory reads both)."""
    value = config.get(key)
    if value is None or isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError as exc:
        parsed, reason = None, f"is not valid JSON ({exc.msg} at character {exc.pos})"
    else:
        reason = f"must be a mapping, got {type(parsed).__name__}"
    if not isinstance(parsed, dict):
        example = ', e.g. {"CPU": 1}' if key == "resources_per_worker" else ""
        problems.append(Problem(key, f"{reason}: write a YAML mapping or a JSON object{example}", config.where(key)))
        return None
    return parsed


def resources(config, problems: list[Problem] | None = None) -> dict | None:
    problems = [] if problems is None else problems
    value = _mapping(config, "resources_per_worker", problems)
    if value:
        bad = {k: v for k, v in value.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
        if bad:
            problems.append(Problem("resources_per_worker", f"amounts must be numbers >= 0, got {bad}: e.g. "
                                    "{\"CPU\": 2} or {\"GPU\": 1}", config.where("resources_per_worker")))
            return None
    return value or None


def ray_problems(config, env=None) -> list[Problem]:
    """With USE_RAY=1: everything that would stop the Ray launch, before any process starts."""
    env = os.environ if env is None else env
    if not use_ray(env):
        return []
    where = "USE_RAY=1 (environment)"
    problems: list[Problem] = []
    if importlib.util.find_spec("ray") is None:
        problems.append(Problem(where, f"needs Ray Train, which is not installed: {INSTALL}; or unset USE_RAY "
                                       "and launch with torchrun (FORCE_TORCHRUN=1 NPROC_PER_NODE=N)"))
    if "LOCAL_RANK" in env:
        problems.append(Problem(where, "this process was started by torchrun / accelerate launch, and Ray starts "
                                       "its own workers: unset USE_RAY, or start `tuneforge train` directly"))
    unused = [name for name in TORCHRUN_VARIABLES if str(env.get(name) or "").strip() not in ("", "0", "false")]
    if unused:
        problems.append(Problem(where, f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} torchrun's: Ray "
                                       "starts ray_num_workers workers itself; unset "
                                       f"{'it' if len(unused) == 1 else 'them'} (or unset USE_RAY to use torchrun)"))
    resources(config, problems)
    _mapping(config, "ray_init_kwargs", problems)
    return problems


def ray_warnings(config, env=None) -> list[str]:
    """Ray keys set without USE_RAY=1 do nothing (in LLaMA-Factory too): said, not dropped silently."""
    if use_ray(env):
        return []
    asked = [k for k in RAY_KEYS if config.is_set(k)]
    if not asked:
        return []
    return [f"{', '.join(f'{k} ({config.where(k)})' for k in asked)} act only with USE_RAY=1 set: this run trains "
            "without Ray (set USE_RAY=1 to run on Ray Train workers)"]


def storage_path(config) -> str:
    """ray_storage_path, made absolute against this folder for a local one (as LLaMA-Factory does)."""
    path = config.get("ray_storage_path") or "./saves"
    return path if config.get("ray_storage_filesystem") else Path(path).absolute().as_posix()


def _filesystem(name: str | None):
    if name is None:
        return None
    import pyarrow.fs as fs

    return fs.S3FileSystem() if name == "s3" else fs.GcsFileSystem()


def launch_with_ray(prepared, config_path: str, overrides: list[str], disabled: list[str]) -> int:
    """Start (or join, per ray_init_kwargs / RAY_ADDRESS) a Ray cluster and train on its workers."""
    import sys

    config = prepared.config
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:
        print(f"error: USE_RAY=1 needs Ray Train ({exc}): {INSTALL}", file=sys.stderr)
        return 2
    workers = int(config.get("ray_num_workers") or 1)
    init_kwargs = _mapping(config, "ray_init_kwargs", []) or {}
    # Ray Train re-routes the workers' print() to its logger, which shows every line twice in the driver's
    # output; tuneforge's lines stay plain prints (Ray still streams them, prefixed with the worker)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not ray.is_initialized():
        ray.init(**init_kwargs)
    per_worker = resources(config)
    if per_worker is None:
        per_worker = {"GPU": 1} if ray.cluster_resources().get("GPU", 0) > 0 else {"CPU": 1}
    use_gpu = per_worker.get("GPU", 0) > 0
    available = ray.cluster_resources()
    short = {k: v * workers for k, v in per_worker.items() if v * workers > available.get(k, 0)}
    if short:
        print(f"warning: {workers} Ray worker(s) x {per_worker} need {short}, but the Ray cluster has "
              f"{ {k: available.get(k, 0) for k in short} }: Ray waits until an autoscaler adds them "
              "(lower ray_num_workers or resources_per_worker otherwise)", file=sys.stderr, flush=True)
    storage = storage_path(config)
    name = config.get("ray_run_name")
    print(f"launching {workers} Ray Train worker(s), {per_worker} each ({config.get('placement_strategy') or 'PACK'}); "
          f"Ray's run record in {storage}/{name or '<Ray run name>'}", flush=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": str(Path(config_path).absolute()), "overrides": list(overrides),
                           "disabled": list(disabled), "cwd": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker,
                                     placement_strategy=config.get("placement_strategy") or "PACK"),
        run_config=RunConfig(name=name, storage_path=storage,
                             storage_filesystem=_filesystem(config.get("ray_storage_filesystem"))),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps a worker's failure; its traceback is in the worker's log above
        print(f"error: the Ray Train run failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    finally:
        if not init_kwargs.get("address") and not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()
    if result.error is not None:
        print(f"error: the Ray Train run failed: {result.error}", file=sys.stderr)
        return 1
    print(f"Ray run record in {result.path}")
    print(f"outputs in {config.get('output_dir')}")
    return 0


def _worker(loop_config: dict) -> None:
    """One Ray Train worker: Ray has set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT and the process
    group; the training is tuneforge's own, from the same config, in the launch folder."""
    os.chdir(loop_config["cwd"])  # relative paths in the config mean what they meant at launch
    os.environ.pop("USE_RAY", None)  # this process trains; it launches nothing
    from ..plan import prepare
    from ..ranks import is_main_process
    from .pipeline import run_training

    prepared = prepare(loop_config["config"], loop_config["overrides"], blocked=loop_config["disabled"])
    prepared.manager.pm.register(RayReport(), name="tuneforge-ray-report")
    metrics = run_training(prepared).metrics
    if is_main_process():
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        print(f"done: {shown}", flush=True)


class RayReport:
    """A plugin the workers register: each checkpoint the Trainer saves is reported to Ray Train (by every
    worker, as Ray needs; rank 0 gives the folder), which copies it into its run record."""

    @hookimpl
    def tuneforge_trainer_created(self, ctx, trainer):
        from transformers import TrainerCallback

        class Report(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                import ray.train

                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                metrics = dict(state.log_history[-1]) if state.log_history else {}
                metrics["step"] = state.global_step
                checkpoint = None
                if state.is_world_process_zero and folder.is_dir():
                    checkpoint = ray.train.Checkpoint.from_directory(str(folder))
                ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=folder.name)

        trainer.add_callback(Report())
