"""`tuneforge plugins`: every installed plugin with its kind, provider and status."""

from __future__ import annotations

import json

from ..specs import KINDS


def register(sub, name):
    p = sub.add_parser(name, help="list installed plugins and their status")
    p.add_argument("--kind", choices=list(KINDS), help="only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plugin_manager import PluginManager

    manager = PluginManager(blocked=args.disable_plugin)
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
    # A plugin that failed to import provides no names, but must not vanish from the listing.
    broken = [
        {"name": r.name, "kind": "?", "version": r.version, "provider": r.distribution, "plugin": r.name,
         "builtin": r.builtin, "status": f"error: {r.error}", "description": ""}
        for r in manager.records if r.status == "error"
    ]
    disabled = [
        {"name": r.name, "kind": "?", "version": r.version, "provider": r.distribution, "plugin": r.name,
         "builtin": r.builtin, "status": "disabled", "description": ""}
        for r in manager.records if r.status == "disabled"
    ]
    if args.kind is None:  # a plugin that never loaded has no known kind; list it with the full listing
        rows += broken + disabled
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        _print_table(rows)
    duplicates = manager.duplicate_entries()
    for entry in duplicates:
        print(f"\nerror: {entry.status.removeprefix('error: ')}")
    return 1 if duplicates else 0


def _print_table(rows: list[dict]) -> None:
    headers = ("name", "kind", "version", "provider", "status")
    table = [headers] + [tuple(str(r[h]) for h in headers) for r in rows]
    widths = [min(max(len(row[i]) for row in table), 40) for i in range(len(headers) - 1)]
    for row in table:
        cells = [row[i].ljust(widths[i]) for i in range(len(headers) - 1)]
        print("  ".join(cells + [row[-1]]).rstrip())
