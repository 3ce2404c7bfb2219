"""`tuneforge` entry point.

The core's verbs are modules of this package (:data:`tuneforge.cli.CORE_COMMANDS`), each with
``register(subparsers, name)`` and ``run(args)``. Every other verb comes from a plugin through the
``tuneforge_commands`` hook: the applications shipped with tuneforge (chat, api, eval, export, webui,
tiny-model) and third-party ones alike. Registering a verb imports no heavy module, so `--help`
stays fast; a plugin verb that cannot register still shows in `--help` and says why when run.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import PluginError, TuneforgeError
from . import CORE_COMMANDS


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disable-plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="block a plugin (entry-point name, plugin name or kind:name); repeatable",
    )


def build_parser(manager=None, *, blocked: list[str] = ()) -> argparse.ArgumentParser:
    """The full parser: core verbs, then every plugin verb ``manager`` (built if not given) found."""
    parser = argparse.ArgumentParser(
        prog="tuneforge",
        description="Fine-tune large language models with plugins. Configs written for llamafactory-cli run unchanged.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"tuneforge {__version__}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in CORE_COMMANDS.items():
        importlib.import_module(module).register(sub, name)
    if manager is None:
        from ..plugin_manager import PluginManager

        manager = PluginManager(blocked=blocked)
    for entry in manager.entries("command"):
        _add_plugin_command(sub, entry, manager)
    return parser


def _add_plugin_command(sub, entry, manager) -> None:
    """One plugin verb. The plugin's ``register`` fills a detached parser first, so one that raises
    halfway leaves nothing behind: the verb is then a stub that reports the plugin as broken."""
    spec = entry.spec
    if entry.status == "disabled" or spec.name in CORE_COMMANDS:  # the clash is listed by `tuneforge plugins`
        return
    problem = None
    probe = argparse.ArgumentParser(prog=f"tuneforge {spec.name}", add_help=False)
    try:
        manager.get("command", spec.name)
        if spec.run is None:
            raise PluginError(f"command '{spec.name}' from {entry.provider} has no run(args); the plugin must set CommandSpec.run")
        if spec.register is not None:
            manager.call(entry, "register", probe)
    except PluginError as exc:
        problem = str(exc)
    if problem is None:
        parser = sub.add_parser(spec.name, help=spec.description, description=spec.description, parents=[probe])
        parser.set_defaults(handler=spec.run)
        return
    parser = sub.add_parser(spec.name, help=f"({entry.status.split(':')[0]}: `tuneforge {spec.name}` says why)",
                            description=problem)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def fail(args, message=problem):
        raise PluginError(message)

    parser.set_defaults(handler=fail)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # while argparse printed help or usage
        return _closed_pipe()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # --disable-plugin decides which plugins (and so which verbs) exist: read it before the full parser.
    early = argparse.ArgumentParser(add_help=False)
    _global_options(early)
    blocked = early.parse_known_args(argv)[0].disable_plugin
    from ..plugin_manager import PluginManager

    manager = PluginManager(blocked=blocked)
    # LLaMA-Factory's CLI takes `key=value` overrides after the config; argparse gets them as extras.
    parser = build_parser(manager)
    args, extra = parser.parse_known_args(argv)
    args.plugin_manager = manager  # the verbs that only list plugins reuse it instead of loading them again
    if args.command is None:
        parser.print_help()
        return 0
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    unknown = [e for e in extra if e not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = getattr(args, "overrides", []) + overrides
    from ..train.noise import silence_known_noise

    silence_known_noise()  # every verb that loads a model (train, chat, export, ...) would print them
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
