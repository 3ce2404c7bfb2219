"""hello: a tuneforge verb added by a plugin (`tuneforge hello [NAME] [--methods]`)."""

from __future__ import annotations

from tuneforge import CommandSpec, hookimpl


def register(parser):
    # Runs for every `tuneforge` call, --help included: add arguments, import nothing heavy.
    parser.add_argument("name", nargs="?", default="world", help="who to greet")
    parser.add_argument("--methods", action="store_true", help="also list the installed fine-tuning methods")


def run(args) -> int:
    from tuneforge.errors import TuneforgeError
    from tuneforge.plugin_manager import PluginManager

    if not args.name.strip():
        raise TuneforgeError("hello: NAME must not be empty")
    print(f"hello, {args.name}")
    if args.methods:
        manager = PluginManager(blocked=args.disable_plugin)
        print("methods: " + ", ".join(manager.names("method")))
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="hello", description="greet someone (a verb added by the tuneforge-hello plugin)",
                        register=register, run=run)]
