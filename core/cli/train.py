"""`tuneforge train CONFIG [key=value ...]`: one process, or several under torchrun (FORCE_TORCHRUN,
NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, as llamafactory-cli reads them), or on
Ray Train workers (USE_RAY=1 and the ray_* keys)."""

from __future__ import annotations


def register(sub, name):
    p = sub.add_parser(name, help="train as the config says (LLaMA-Factory keys; key=value overrides)")
    p.add_argument("config", help="YAML config")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plan import prepare
    from ..ranks import is_main_process
    from ..train.launcher import planned_launch, relaunch
    from .check import print_plan

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin)  # every problem before any launch
    config = prepared.config
    from ..train.host_memory import before_torch

    before_torch(config)  # torch reads its allocator setting once, when it loads
    if not config.get("dataset") and not (config.get("do_predict") and not config.get("do_train")):
        from ..errors import ConfigError, Problem

        # before the model loads, not after: `train` trains (do_train unset means true) and needs data
        raise ConfigError([Problem("dataset", "`tuneforge train` needs training data: set dataset (names from "
                                   "dataset_info.json, or a data file); for predictions only, set do_predict: true "
                                   "and eval_dataset", config.where("dataset"))])
    from ..train.ray_launcher import launch_with_ray, use_ray

    if use_ray():  # checked in prepare: Ray installed, its keys, no torchrun variable left unused
        print_plan(prepared)
        return launch_with_ray(prepared, args.config, args.overrides, args.disable_plugin)
    launch = planned_launch()
    if launch is not None:
        argv = [f"--disable-plugin={name}" for name in args.disable_plugin] + ["train", args.config, *args.overrides]
        return relaunch(launch, argv)
    main_process = is_main_process()
    if main_process:
        from ..planner import print_memory_plan

        print_plan(prepared)
        print_memory_plan(prepared)  # weights, gradients, optimizer, activations per device; never fatal
    from ..train.pipeline import run_training

    metrics = run_training(prepared).metrics
    if main_process:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        print(f"done: {shown}")
        print(f"outputs in {prepared.config.get('output_dir')}")
    return 0
