"""`tuneforge plugins`: every installed plugin with its kind, provider and status.

Listing a plugin also asks it the questions a run would: its specs, ``unavailable_reason()`` and
``validate()`` on a config of defaults. A plugin that raises on one of them is listed as
``broken: <ExceptionType: message>`` here, before any run selects it.
"""

from __future__ import annotations

import json

from ..specs import KINDS


def register(sub, name):
    p = sub.add_parser(name, help="list installed plugins and their status")
    p.add_argument("--kind", choices=list(KINDS), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def probe_validators(manager) -> None:
    """Run every active plugin's ``validate`` on a config that sets nothing (every key at its
    default), so one that raises is marked broken. The problems it reports are not wanted here: a
    config of defaults names no model and no dataset. Each validator gets the plan the defaults
    resolve to, as it would in a run (None where nothing resolves)."""
    from ..config.model import Config
    from ..config.validate import declared_defaults
    from ..plan import resolve_plan

    config = Config({}, declared_defaults(manager))
    try:
        plan, _ = resolve_plan(config, manager)
    except Exception:  # a selected plugin that is broken is reported by its own entry below
        plan = None
    for entry in manager.entries():
        if entry.status == "active" and entry.spec.validate is not None:
            manager.validate(entry, config, plan)


def run(args) -> int:
    from ..plugin_manager import PluginManager

    manager = getattr(args, "plugin_manager", None) or PluginManager(blocked=args.disable_plugin)
    probe_validators(manager)
    rows = [
        {
            "name": e.name,
            "kind": e.kind,
            "version": e.record.version,
            "provider": e.record.distribution,
            "plugin": e.record.name,
            "builtin": e.record.builtin,
            "status": e.status,
            "description": e.spec.description,
        }
        for e in manager.entries(args.kind)
    ]
    # A plugin that failed to load provides no names, but must not vanish from the listing.
    broken = [
        {"name": r.name, "kind": "?", "version": r.version, "provider": r.distribution, "plugin": r.name,
         "builtin": r.builtin, "status": f"broken: {r.error}", "description": ""}
        for r in manager.broken_records()
    ]
    disabled = [
        {"name": r.name, "kind": "?", "version": r.version, "provider": r.distribution, "plugin": r.name,
         "builtin": r.builtin, "status": "disabled", "description": ""}
        for r in manager.disabled_records()
    ]
    if args.kind is None:  # a plugin that never loaded has no known kind; list it with the full listing
        rows += broken + disabled
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        _print_table(rows)
    errors = manager.errors()
    for message in errors:
        print(f"\nerror: {message}")
    return 1 if errors else 0


def _print_table(rows: list[dict]) -> None:
    headers = ("name", "kind", "version", "provider", "status")
    table = [headers] + [tuple(str(r[h]) for h in headers) for r in rows]
    widths = [min(max(len(row[i]) for row in table), 40) for i in range(len(headers) - 1)]
    for row in table:
        cells = [row[i].ljust(widths[i]) for i in range(len(headers) - 1)]
        print("  ".join(cells + [row[-1]]).rstrip())
