"""Discovers plugins, collects their specs, and hands them to the core through typed getters.

Built-in plugins (``tuneforge.plugins.BUILTIN_MODULES``) and third-party ones (entry-point group
``tuneforge``) go through the same :meth:`PluginManager._register` path. Nothing fails at discovery:
a plugin that cannot import, lacks an optional dependency or clashes with another plugin's name is
recorded with that status, so `tuneforge plugins` can show it; only a run that needs it fails.

Environment:
- ``TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry-point discovery (built-ins still load);
- ``TUNEFORGE_DISABLE_PLUGINS=a,b`` blocks plugins like the ``disable_plugins`` config key.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from . import __version__, hookspecs
from .errors import PluginError, did_you_mean
from .specs import KINDS, PluginSpec

ENTRY_POINT_GROUP = "tuneforge"
AUTOLOAD_ENV = "TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "TUNEFORGE_DISABLE_PLUGINS"


@dataclass
class PluginRecord:
    """One plugin module: where it came from and whether it loaded."""

    name: str  # entry-point name, or module name for built-ins
    distribution: str
    version: str
    builtin: bool
    status: str = "active"  # active | disabled | error
    error: str = ""
    module: Any = None


@dataclass
class SpecEntry:
    """One named thing a plugin provides (a method, a template, ...), with its provider."""

    spec: PluginSpec
    record: PluginRecord
    status: str = "active"  # active | disabled | unavailable: ... | error: ...
    duplicates: list["SpecEntry"] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def provider(self) -> str:
        rec = self.record
        where = "built-in" if rec.builtin else f"entry point '{rec.name}'"
        return " ".join(p for p in (rec.distribution, rec.version, f"({where})") if p)


def split_names(value: Any) -> list[str]:
    """Accept ``"a,b"``, ``["a", "b"]`` or None, as LLaMA-Factory's comma lists do."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


class PluginManager:
    """The registry of every plugin kind. Build one per run (tests build a fresh one each)."""

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        blocked: Iterable[str] = (),
        builtins: bool = True,
        extra_plugins: Iterable[tuple[str, Any]] = (),
    ):
        if autoload is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        self.blocked = set(split_names(list(blocked))) | set(split_names(os.environ.get(BLOCK_ENV)))
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self._entries: dict[str, dict[str, SpecEntry]] = {kind: {} for kind in KINDS}

        if builtins:
            from tuneforge.plugins import BUILTIN_MODULES

            for module_name in BUILTIN_MODULES:
                record = PluginRecord(module_name, "tuneforge", __version__, builtin=True)
                self._load_and_register(record, lambda m=module_name: importlib.import_module(m))
        for name, obj in extra_plugins:
            record = PluginRecord(name, "(in process)", "", builtin=False)
            self._load_and_register(record, lambda o=obj: o)
        if autoload:
            for ep in _entry_points():
                dist = getattr(ep, "dist", None)
                record = PluginRecord(
                    ep.name,
                    dist.metadata["Name"] if dist is not None else "?",
                    dist.version if dist is not None else "?",
                    builtin=False,
                )
                self._load_and_register(record, ep.load)
        self._collect_specs()

    # --- discovery ------------------------------------------------------------------------------

    def _load_and_register(self, record: PluginRecord, load) -> None:
        self.records.append(record)
        if record.name in self.blocked or record.distribution in self.blocked:
            record.status = "disabled"
            return
        try:
            module = load()
            self.pm.register(module, name=f"{record.distribution}:{record.name}")
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            record.status = "error"
            record.error = f"{type(exc).__name__}: {exc}"
            return
        record.module = module

    def _collect_specs(self) -> None:
        for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items():
            for record in self.records:
                if record.module is None:
                    continue
                impl = getattr(record.module, hook_name, None)
                if impl is None:
                    continue
                try:
                    specs = list(impl() or ())
                except Exception as exc:
                    record.status = "error"
                    record.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                    continue
                for spec in specs:
                    self._add_spec(kind, spec, record)

    def _add_spec(self, kind: str, spec: PluginSpec, record: PluginRecord) -> None:
        if getattr(spec, "kind", None) != kind:
            record.status = "error"
            record.error = f"{kind} hook returned {type(spec).__name__} {getattr(spec, 'name', spec)!r}"
            return
        entry = SpecEntry(spec=spec, record=record, status=self._status_of(spec))
        existing = self._entries[kind].get(spec.name)
        if existing is not None:
            existing.duplicates.append(entry)
            names = " and ".join(e.provider for e in [existing, *existing.duplicates])
            existing.status = f"error: duplicate {kind} name '{spec.name}', provided by {names}"
            return
        self._entries[kind][spec.name] = entry

    def _status_of(self, spec: PluginSpec) -> str:
        if spec.name in self.blocked or f"{spec.kind}:{spec.name}" in self.blocked:
            return "disabled"
        missing = spec.missing_requirements()
        if missing:
            return "unavailable: missing " + ", ".join(f"{r.module} ({r.pip})" for r in missing)
        if spec.unavailable_reason is not None:
            reason = spec.unavailable_reason()
            if reason:
                return f"unavailable: {reason}"
        return "active"

    # --- queries --------------------------------------------------------------------------------

    @property
    def hook(self):
        """pluggy's hook relay, for the core's lifecycle and detection calls."""
        return self.pm.hook

    def entries(self, kind: str | None = None) -> list[SpecEntry]:
        kinds = [kind] if kind else list(KINDS)
        out: list[SpecEntry] = []
        for k in kinds:
            if k not in self._entries:
                raise PluginError(f"unknown plugin kind '{k}'{did_you_mean(k, KINDS)} available: {', '.join(KINDS)}")
            out.extend(sorted(self._entries[k].values(), key=lambda e: e.name))
        return out

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entry(self, kind: str, name: str, *, key: str | None = None) -> SpecEntry:
        """The entry for ``name`` whatever its status; raises for an unknown or duplicated name."""
        key = key or KINDS.get(kind) or kind
        table = self._entries[kind]
        if name not in table:
            for rec in self.disabled_records():
                if name in (rec.name, rec.distribution):
                    raise PluginError(
                        f"{kind} '{name}' is disabled: plugin '{rec.name}' ({rec.distribution} {rec.version}) is blocked by "
                        f"disable_plugins / {BLOCK_ENV} / --disable-plugin; remove it from the block list"
                    )
            available = ", ".join(sorted(table)) or "none installed"
            hint = did_you_mean(name, table)
            disabled = [r.name for r in self.disabled_records()]
            blocked = f" (blocked plugins may provide it: {', '.join(disabled)})" if disabled and not hint else ""
            raise PluginError(f"unknown {key} '{name}'{hint} available: {available}{blocked}")
        entry = table[name]
        if entry.duplicates:
            raise PluginError(entry.status.removeprefix("error: "))
        return entry

    def get(self, kind: str, name: str, *, key: str | None = None) -> PluginSpec:
        """The spec for ``name``, ready to run; raises with the reason and the fix otherwise."""
        entry = self.entry(kind, name, key=key)
        if entry.status == "disabled":
            raise PluginError(f"{kind} '{name}' is disabled (disable_plugins / {BLOCK_ENV}); remove it from the block list")
        if entry.status.startswith("unavailable"):
            raise PluginError(f"{kind} '{name}' is {entry.status}")
        return entry.spec

    def loader(self, name: str):
        return self.get("loader", name)

    def quantizer(self, name: str):
        return self.get("quantizer", name)

    def method(self, name: str):
        return self.get("method", name)

    def template(self, name: str):
        return self.get("template", name)

    def format(self, name: str):
        return self.get("format", name)

    def stage(self, name: str):
        return self.get("stage", name)

    def reward(self, name: str):
        return self.get("reward", name)

    def owned_keys(self) -> dict[str, list[SpecEntry]]:
        """Config key name -> the plugin entries that declare it."""
        owners: dict[str, list[SpecEntry]] = {}
        for entry in self.entries():
            for key in entry.spec.keys:
                owners.setdefault(key.name, []).append(entry)
        return owners

    def disabled_records(self) -> list[PluginRecord]:
        return [r for r in self.records if r.status == "disabled"]

    def broken_records(self) -> list[PluginRecord]:
        return [r for r in self.records if r.status == "error"]

    def duplicate_entries(self) -> list[SpecEntry]:
        return [e for e in self.entries() if e.duplicates]


def _entry_points():
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
