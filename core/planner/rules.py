"""The per-plugin rules the planner's formulas ask for, read from the specs of the plugins a config
selects: which parameters a method trains and the optimizer state it keeps (``MethodSpec.plan_*``),
the bytes of a quantized weight (``QuantizerSpec.bytes_per_weight``), whether a stage pairs rows or
needs a reference model (``StageSpec``). The formulas in ``estimate.py`` name no plugin, so a
pip-installed method or quantizer is planned exactly like a built-in one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import PluginError
from ..plugin_helpers import checkpoint_quantization

_DEFAULT_MANAGER = None


def default_manager():
    """Every installed plugin, built once per process (the planner only reads specs)."""
    global _DEFAULT_MANAGER
    if _DEFAULT_MANAGER is None:
        from ..plugin_manager import PluginManager

        _DEFAULT_MANAGER = PluginManager()
    return _DEFAULT_MANAGER


def _spec(manager, kind: str, name: str | None):
    if not name:
        return None
    try:
        return manager.entry(kind, str(name))
    except PluginError:
        return None


_DEFAULTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _default(manager, key: str):
    """A selection key's default (DEFAULT_SELECTIONS through the declared keys), once per manager:
    the advice re-plans the config a few dozen times."""
    from ..config.validate import declared_defaults

    if manager not in _DEFAULTS:
        _DEFAULTS[manager] = declared_defaults(manager)
    return _DEFAULTS[manager].get(key)


def selected_method(config, manager) -> str:
    """The method the plan selects: a method's own flag (use_galore: true) wins over finetuning_type."""
    for entry in manager.entries("method"):
        if entry.spec.flag and config.get(entry.spec.flag):
            return entry.name
    return str(config.get("finetuning_type") or _default(manager, "finetuning_type"))


@dataclass
class Rules:
    """The specs behind one estimate (``None`` where the plugin is not installed: generic rules apply)."""

    manager: Any
    method: str
    stage: str
    method_entry: Any = None
    stage_entry: Any = None
    quantizer_entry: Any = None
    quantizer_name: str | None = None

    @property
    def method_spec(self):
        return self.method_entry.spec if self.method_entry is not None else None

    @property
    def stage_spec(self):
        return self.stage_entry.spec if self.stage_entry is not None else None

    @property
    def quantizer(self):
        return self.quantizer_entry.spec if self.quantizer_entry is not None else None

    @property
    def trains_base_weights(self) -> bool:
        return self.method_spec is None or self.method_spec.trains_base_weights

    @property
    def keeps_trainable_dtype(self) -> bool:
        return self.method_spec is not None and self.method_spec.keeps_trainable_dtype

    @property
    def upcasts_unquantized(self) -> bool:
        return self.quantizer is not None and self.quantizer.upcasts_unquantized

    @property
    def pairs_rows(self) -> bool:
        return self.stage_spec is not None and self.stage_spec.pairs_rows

    @property
    def lm_loss(self) -> bool:
        return self.stage_spec is None or self.stage_spec.lm_loss

    @property
    def unplanned(self) -> str | None:
        if self.stage_spec is None:
            return "its own models and data"
        return self.stage_spec.unplanned

    def needs_reference(self, config) -> bool:
        spec = self.stage_spec
        return spec is not None and spec.needs_reference is not None and bool(spec.needs_reference(config))

    def trainable_rule(self, config) -> Callable | None:
        """The method's ``plan_trainable``, or that of the method its ``base_method`` names."""
        spec = self.method_spec
        if spec is None:
            return None
        if spec.plan_trainable is not None:
            return spec.plan_trainable
        if spec.base_method is not None:
            base = _spec(self.manager, "method", spec.base_method(config))
            return base.spec.plan_trainable if base is not None else None
        return None

    def optimizer_rule(self) -> Callable | None:
        spec = self.method_spec
        return spec.plan_optimizer_state if spec is not None else None

    def adapter_method(self):
        """The method the advice suggests instead of one that trains the base weights: the default
        method when it trains adapters, else the first installed method that does."""
        default = _default(self.manager, "finetuning_type")
        candidates = sorted(self.manager.entries("method"), key=lambda e: e.name != default)
        return next((e for e in candidates if not e.spec.trains_base_weights and e.spec.adapter is not None
                     and e.spec.plan_trainable is not None), None)

    def method_flags_off(self) -> dict[str, bool]:
        """Every method-selecting flag switched off, so finetuning_type decides."""
        return {e.spec.flag: False for e in self.manager.entries("method") if e.spec.flag}

    def default_quantizer(self) -> str | None:
        return _default(self.manager, "quantization_method")


def rules_for(config, manager=None, *, method: str | None = None, stage: str | None = None) -> Rules:
    manager = manager or default_manager()
    method = method or selected_method(config, manager)
    stage = stage or str(config.get("stage") or _default(manager, "stage"))
    quantizer_entry = None
    existing = checkpoint_quantization(config.get("model_name_or_path"))
    if existing is not None:
        quantizer_entry = next((e for e in manager.entries("quantizer")
                                if e.spec.recognizes is not None and e.spec.recognizes(existing)), None)
    elif config.get("quantization_bit") is not None:
        quantizer_entry = _spec(manager, "quantizer", config.get("quantization_method")
                                or _default(manager, "quantization_method"))
    name = quantizer_entry.name if quantizer_entry is not None else (
        None if existing is not None else config.get("quantization_method") or _default(manager, "quantization_method"))
    return Rules(manager, method, stage, _spec(manager, "method", method), _spec(manager, "stage", stage),
                 quantizer_entry, name)
