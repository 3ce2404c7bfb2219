"""`tuneforge train CONFIG [key=value ...]`."""

from __future__ import annotations


def register(sub, name):
    p = sub.add_parser(name, help="train as the config says (LLaMA-Factory keys; key=value overrides)")
    p.add_argument("config", help="YAML config")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plan import prepare
    from .check import print_plan

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin)
    print_plan(prepared)
    from ..train.pipeline import run_training

    metrics = run_training(prepared).metrics
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(f"done: {shown}")
    print(f"outputs in {prepared.config.get('output_dir')}")
    return 0
