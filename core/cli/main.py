"""`tuneforge` entry point. Each subcommand is its own module with ``register(subparsers)`` and
``run(args)``; modules keep heavy imports inside ``run`` so `--help` and `plugins` stay fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import TuneforgeError

_APPS = "tuneforge.plugins.apps"

#: subcommand -> module with ``register`` and ``run``. The core's own verbs live in tuneforge.cli;
#: the applications built on the core (chat, api, eval, export, webui, tiny-model) live in plugins/apps.
SUBCOMMANDS = {
    "train": f"{__package__}.train",
    "check": f"{__package__}.check",
    "plan": f"{__package__}.plan",
    "data": f"{__package__}.data",
    "chat": f"{_APPS}.chat.cli",
    "api": f"{_APPS}.api.cli",
    "eval": f"{_APPS}.benchmark.cli",
    "export": f"{_APPS}.export.cli",
    "webui": f"{_APPS}.webui.cli",
    "plugins": f"{__package__}.plugins",
    "show": f"{__package__}.show",
    "tiny-model": f"{_APPS}.tiny_model.cli",
    "env": f"{__package__}.env",
    "version": f"{__package__}.version",
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
        importlib.import_module(module).register(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # while argparse printed help or usage
        return _closed_pipe()


def _main(argv: list[str] | None) -> int:
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
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """The reader of our output went away (`tuneforge plugins | head`): stop quietly, as the Python docs
    recommend (signal module, "Note on SIGPIPE"): point stdout at devnull so the final flush cannot
    raise again, and exit 1."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (a test's StringIO): nothing to flush later
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
