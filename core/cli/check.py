"""`tuneforge check CONFIG [key=value ...]`: validate everything and print the plan; load nothing."""

from __future__ import annotations


def register(sub, name):
    p = sub.add_parser(name, help="validate a config and print which plugins would run; loads no model")
    p.add_argument("config", help="YAML config (LLaMA-Factory's keys)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plan import prepare

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin)
    print_plan(prepared)
    print("\nconfig OK")
    return 0


def print_plan(prepared) -> None:
    config = prepared.config
    print(f"model: {config.model_name_or_path}")
    print(f"output_dir: {config.get('output_dir')}")
    print("plan:")
    rows = prepared.plan.describe()
    width = max(len(r[0]) for r in rows)
    for role, name, provider in rows:
        print(f"  {role.ljust(width)}  {name}  [{provider}]")
    for warning in prepared.warnings:
        print(f"warning: {warning}")
