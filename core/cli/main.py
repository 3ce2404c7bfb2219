"""`tuneforge` entry point. Each subcommand is its own module with ``register(subparsers)`` and
``run(args)``; modules keep heavy imports inside ``run`` so `--help` and `plugins` stay fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import TuneforgeError

#: subcommand -> module under tuneforge.cli
SUBCOMMANDS = {
    "train": "train",
    "check": "check",
    "plan": "plan",
    "data": "data",
    "chat": "chat",
    "api": "api",
    "eval": "eval",
    "export": "export",
    "webui": "webui",
    "plugins": "plugins",
    "show": "show",
    "tiny-model": "tiny_model",
    "env": "env",
    "version": "version",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        description="Fine-tune large language models with plugins. Configs written for llamafactory-cli run unchanged.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"tuneforge {__version__}")
    parser.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="block a plugin (entry-point name, plugin name or kind:name); repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f"{__package__}.{module}").register(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    # LLaMA-Factory's CLI takes `key=value` overrides after the config; argparse gets them as extras.
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    unknown = [e for e in extra if e not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = getattr(args, "overrides", []) + overrides
    try:
        return int(args.handler(args) or 0)
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
