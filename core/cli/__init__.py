"""The tuneforge command line: one module per core verb.

The applications built on the core (chat, api, eval, export, webui, tiny-model) are not here: they add
their verbs through the ``tuneforge_commands`` hook, like any third-party plugin (see tuneforge.plugins.apps).
"""

#: The core's own verbs -> the module with ``register(subparsers, name)`` and ``run(args)``. A plugin
#: command cannot take one of these names.
CORE_COMMANDS: dict[str, str] = {
    "train": f"{__name__}.train",
    "check": f"{__name__}.check",
    "plan": f"{__name__}.plan",
    "data": f"{__name__}.data",
    "plugins": f"{__name__}.plugins",
    "show": f"{__name__}.show",
    "env": f"{__name__}.env",
    "version": f"{__name__}.version",
}
