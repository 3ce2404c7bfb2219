"""`tuneforge show KIND NAME`: one plugin's description and config keys."""

from __future__ import annotations

from ..specs import KINDS


def register(sub, name):
    p = sub.add_parser(name, help="describe one plugin and its config keys")
    p.add_argument("kind", choices=list(KINDS))
    p.add_argument("name")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plugin_manager import PluginManager

    manager = getattr(args, "plugin_manager", None) or PluginManager(blocked=args.disable_plugin)
    entry = manager.entry(args.kind, args.name)
    spec = entry.spec
    print(f"{spec.kind} '{spec.name}' from {entry.provider}")
    print(f"status: {entry.status}")
    print(f"\n{spec.description}\n")
    if spec.requires:
        print("requires:")
        for r in spec.requires:
            print(f"  {r.module}: {'missing, install with: ' + r.pip if r.missing() else 'installed'}")
        print()
    if getattr(spec, "flag", None):
        print(f"also selected by: {spec.flag}: true\n")
    if getattr(spec, "bits", None):
        print(f"bits: {', '.join(map(str, spec.bits))}\n")
    if not spec.keys:
        print("config keys: none")
        return 0
    print("config keys:")
    for key in spec.keys:
        choices = f" (one of: {', '.join(str(c) for c in key.choices if c is not None)})" if key.choices else ""
        note = "" if key.effective else " [accepted, no effect yet]"
        limits = [text for text in (key.range_text(), f"a {key.path} path" if key.path else "",
                                    f"not with {', '.join(key.excludes)}" if key.excludes else "") if text]
        limit = f" ({'; '.join(limits)})" if limits else ""
        print(f"  {key.name}: {key.type_name()} = {key.default!r}{choices}{limit}{note}")
        if key.doc:
            print(f"      {key.doc}")
    return 0
