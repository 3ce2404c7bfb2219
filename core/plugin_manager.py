"""Discovers plugins, collects their specs, and hands them to the core through typed getters.

Built-in plugins (``tuneforge.plugins.BUILTIN_MODULES``) and third-party ones (entry-point group
``tuneforge``) go through the same :meth:`PluginManager._load_and_register` path, and their specs are
collected through pluggy's hook callers, one plugin at a time so each spec keeps its provider.
Nothing fails at discovery: a plugin that cannot import, names a hook that does not exist, raises
while handing over its specs or answering ``unavailable_reason()`` / ``validate()`` is recorded as
``broken: <ExceptionType: message>``; one that lacks an optional dependency as ``unavailable``; one
whose name or config key clashes with another plugin's as ``error``. `tuneforge plugins` shows every
status; only a run that selects such a plugin fails, with the reason.

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
from .specs import KINDS, SPEC_TYPES, ConfigKey, PluginSpec

ENTRY_POINT_GROUP = "tuneforge"
#: Every hook a plugin may implement (the ``@hookspec`` functions of tuneforge.hookspecs).
HOOK_NAMES: tuple[str, ...] = tuple(
    name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")
)
AUTOLOAD_ENV = "TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "TUNEFORGE_DISABLE_PLUGINS"


@dataclass
class PluginRecord:
    """One plugin module: where it came from and whether it loaded."""

    name: str  # entry-point name, or module name for built-ins
    distribution: str
    version: str
    builtin: bool
    status: str = "active"  # active | disabled | broken
    error: str = ""
    module: Any = None

    @property
    def pluggy_name(self) -> str:
        """The name this plugin is registered under in pluggy."""
        return f"{self.distribution}:{self.name}"

    @property
    def provider(self) -> str:
        where = "built-in" if self.builtin else f"entry point '{self.name}'"
        return " ".join(p for p in (self.distribution, self.version, f"({where})") if p)

    def mark_broken(self, reason: str) -> None:
        self.status = "broken"
        self.error = reason


@dataclass
class SpecEntry:
    """One named thing a plugin provides (a method, a template, ...), with its provider."""

    spec: PluginSpec
    record: PluginRecord
    status: str = "active"  # active | disabled | unavailable: ... | broken: ... | error: ...
    duplicates: list["SpecEntry"] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def provider(self) -> str:
        return self.record.provider


def _exception_text(exc: BaseException, where: str = "") -> str:
    """``ExceptionType: message (in where)``: what `tuneforge plugins` shows after ``broken:``."""
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} (in {where})" if where else text


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
        #: Config key -> the error naming the two plugins that declare it differently.
        self.key_conflicts: dict[str, str] = {}

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
        except Exception as exc:  # a broken third-party plugin must not break the CLI
            record.mark_broken(_exception_text(exc))
            return
        problems = self._hook_name_problems(module)
        if problems:
            record.mark_broken("; ".join(problems))
            return
        try:
            self.pm.register(module, name=record.pluggy_name)
        except Exception as exc:  # pluggy.PluginValidationError (wrong argument names), or registered twice
            record.mark_broken(_exception_text(exc))
            return
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:  # a marked hookimpl for a hook that does not exist
            self.pm.unregister(module)
            record.mark_broken(_exception_text(exc))
            return
        record.module = module

    def _hook_name_problems(self, plugin: Any) -> list[str]:
        """Attributes named like hooks that pluggy would skip without a word.

        pluggy registers only functions marked ``@hookimpl``, and its ``check_pending()`` only sees those:
        a misspelled, unmarked ``tuneforge_method`` would be ignored and the plugin would seem to provide
        nothing. Every callable ``tuneforge_*`` attribute must be a marked implementation of a real hook.
        """
        hooks = HOOK_NAMES
        problems = []
        for name in sorted(dir(plugin)):
            if not name.startswith(f"{hookspecs.PROJECT}_"):
                continue
            try:
                value = getattr(plugin, name)
            except Exception:
                continue
            if not callable(value):
                continue
            if name not in hooks:
                problems.append(f"unknown hook '{name}'{did_you_mean(name, hooks)} (hooks: docs/hooks.md)")
            elif self.pm.parse_hookimpl_opts(plugin, name) is None:
                problems.append(f"'{name}' is not marked @hookimpl (from tuneforge import hookimpl), so pluggy would skip it")
        return problems

    def _collect_specs(self) -> None:
        """Ask each plugin for its specs through pluggy, one plugin at a time.

        One ``pm.hook.tuneforge_methods()`` call would stop at the first plugin that raises and would
        not say which plugin returned which spec; a caller limited to one plugin
        (``subset_hook_caller``) keeps both the attribution and the isolation. A plugin whose hook
        raises, or returns the wrong spec type, is broken and contributes nothing: no spec, and no
        detection or lifecycle hook either.
        """
        plugins = dict(self.pm.list_name_plugin())
        implementers = {
            hook_name: {impl.plugin_name for impl in getattr(self.pm.hook, hook_name).get_hookimpls()}
            for hook_name in hookspecs.REGISTRATION_HOOKS
        }
        for record in self.records:
            if record.module is None:
                continue
            others = [plugin for name, plugin in plugins.items() if name != record.pluggy_name]
            collected: list[tuple[str, PluginSpec]] = []
            try:
                for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items():
                    if record.pluggy_name not in implementers[hook_name]:
                        continue
                    caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
                    try:
                        results = caller()
                        specs = [spec for result in results for spec in (result or ())]
                    except Exception as exc:
                        raise _Broken(_exception_text(exc, f"{hook_name}()")) from exc
                    expected = SPEC_TYPES[kind]
                    for spec in specs:
                        if not isinstance(spec, expected):
                            raise _Broken(f"{hook_name}() returned {type(spec).__name__} {getattr(spec, 'name', spec)!r}; "
                                          f"it must return {expected.__name__} objects")
                        collected.append((kind, spec))
            except _Broken as exc:
                record.mark_broken(str(exc))
                self.pm.unregister(record.module)  # nor do its detection and lifecycle hooks run
                continue
            for kind, spec in collected:
                self._add_spec(kind, spec, record)
        self._check_keys()

    def _add_spec(self, kind: str, spec: PluginSpec, record: PluginRecord) -> None:
        entry = SpecEntry(spec=spec, record=record)
        entry.status = self._status_of(entry)
        existing = self._entries[kind].get(spec.name)
        if existing is not None:
            existing.duplicates.append(entry)
            names = " and ".join(e.provider for e in [existing, *existing.duplicates])
            existing.status = f"error: duplicate {kind} name '{spec.name}', provided by {names}"
            return
        self._entries[kind][spec.name] = entry

    def _status_of(self, entry: SpecEntry) -> str:
        spec = entry.spec
        if spec.name in self.blocked or f"{spec.kind}:{spec.name}" in self.blocked:
            return "disabled"
        if spec.kind == "command":
            from .cli import CORE_COMMANDS

            if spec.name in CORE_COMMANDS:
                return (f"error: command '{spec.name}' from {entry.provider} has the name of a core verb; "
                        "core verbs cannot be replaced: rename the plugin's command")
        missing = spec.missing_requirements()
        if missing:
            return "unavailable: missing " + ", ".join(f"{r.module} ({r.pip})" for r in missing)
        if spec.unavailable_reason is not None:
            try:
                reason = self.call(entry, "unavailable_reason")
            except PluginError:
                return entry.status
            if reason:
                return f"unavailable: {reason}"
        return "active"

    def _check_keys(self) -> None:
        """One config key, one meaning: plugins that declare a key differently are an error naming both.

        A key several plugins act on (``lora_rank`` for every LoRA variant) is fine when each declares
        the same type, default and choices; otherwise which one a config got would depend on load order.
        """
        for name, owners in self.owned_keys().items():
            first = owners[0]
            first_key = _key(first, name)
            for other in owners[1:]:
                other_key = _key(other, name)
                if _key_signature(other_key) == _key_signature(first_key):
                    continue
                message = (
                    f"config key '{name}' is declared differently by {first.kind} '{first.name}' from {first.provider} "
                    f"({_describe_key(first_key)}) and {other.kind} '{other.name}' from {other.provider} "
                    f"({_describe_key(other_key)}); plugins sharing a key must declare the same type, default and "
                    "choices (declare it once and share the ConfigKey), or one of them must rename it"
                )
                self.key_conflicts[name] = message
                for entry in (first, other):
                    if not entry.status.startswith("error"):
                        entry.status = f"error: {message}"
                break

    def call(self, entry: SpecEntry, attr: str, *args: Any, **kwargs: Any) -> Any:
        """Call the plugin-provided callable ``entry.spec.<attr>``; the one guarded way to run plugin code
        that answers the core's questions (availability, validation).

        An exception is a bug in the plugin, not in the user's config: the entry is marked
        ``broken: <ExceptionType: message>`` (so `tuneforge plugins` shows it) and a PluginError naming
        the plugin is raised instead, which a command reports without a traceback.
        """
        fn = getattr(entry.spec, attr)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            reason = _exception_text(exc, f"{attr}()")
            entry.status = f"broken: {reason}"
            raise PluginError(_broken_message(entry)) from exc

    def validate(self, entry: SpecEntry, *args: Any) -> list[str]:
        """The problems ``entry.spec.validate(*args)`` finds in a config; a validator that raises is
        reported as one problem naming the broken plugin."""
        if entry.spec.validate is None:
            return []
        try:
            return list(self.call(entry, "validate", *args) or ())
        except PluginError as exc:
            return [str(exc)]

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
            unusable = [r.name for r in self.broken_records() + self.disabled_records()]
            blocked = f" (broken or blocked plugins may provide it: {', '.join(unusable)})" if unusable and not hint else ""
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
        if entry.status.startswith("broken"):
            raise PluginError(_broken_message(entry))
        if entry.status.startswith("error"):
            raise PluginError(entry.status.removeprefix("error: "))
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
        return [r for r in self.records if r.status == "broken"]

    def duplicate_entries(self) -> list[SpecEntry]:
        return [e for e in self.entries() if e.duplicates]

    def errors(self) -> list[str]:
        """Clashes between plugins (one name from two providers, one key declared two ways, a command
        named like a core verb): each one makes `tuneforge plugins` fail, and a config that selects a
        plugin involved."""
        messages = [e.status.removeprefix("error: ") for e in self.entries() if e.status.startswith("error")]
        return list(dict.fromkeys(messages))


class _Broken(Exception):
    """A plugin failed while handing over its specs."""


def _broken_message(entry: SpecEntry) -> str:
    reason = entry.status.removeprefix("broken: ")
    return (f"{entry.kind} '{entry.name}' from {entry.provider} is broken: {reason}; this is a bug in the plugin: "
            f"update or fix it, or block it with disable_plugins / --disable-plugin {entry.record.name}")


def _key(entry: SpecEntry, name: str) -> ConfigKey:
    return next(k for k in entry.spec.keys if k.name == name)


def _key_signature(key: ConfigKey) -> tuple:
    types = key.type if isinstance(key.type, tuple) else (key.type,)
    return (types, repr(key.default), key.choices, key.effective)


def _describe_key(key: ConfigKey) -> str:
    text = f"{key.type_name()} = {key.default!r}"
    if key.choices is not None:
        text += f", choices {', '.join(map(str, key.choices))}"
    if not key.effective:
        text += ", not effective"
    return text


def _entry_points():
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
