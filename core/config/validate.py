"""Check every key of a config against its owner's declaration: known name, right type, allowed value.

All problems are collected and returned together; nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

from ..errors import Problem, did_you_mean
from ..specs import ConfigKey
from .hf_training_args import HF_TRAINING_ARGS
from .keys import CORE_KEYS

_TYPE_BY_NAME = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict, "list": list}


def _hf_key(name: str) -> ConfigKey:
    types, default = HF_TRAINING_ARGS[name]
    return ConfigKey(name, tuple(_TYPE_BY_NAME[t] for t in types), default, "Hugging Face TrainingArguments")


def declared_keys(manager) -> dict[str, ConfigKey]:
    """Every key a config may set: core keys, plugin keys, TrainingArguments fields."""
    keys: dict[str, ConfigKey] = {name: _hf_key(name) for name in HF_TRAINING_ARGS}
    for name, owners in manager.owned_keys().items():
        keys[name] = owners[0].spec.keys[[k.name for k in owners[0].spec.keys].index(name)]
    keys.update(CORE_KEYS)
    return keys


def coerce(key: ConfigKey, value: Any) -> tuple[Any, str | None]:
    """Return the value converted to the key's type, or an error message.

    None is accepted for every key (it means "use the default"). Numeric strings become numbers,
    like Hugging Face's argument parser does, because YAML reads ``1e-4`` as a string.
    """
    if value is None:
        return None, None
    types = key.type if isinstance(key.type, tuple) else (key.type,)
    if isinstance(value, bool):
        if bool in types:
            return value, None
    elif any(isinstance(value, t) for t in types if t not in (bool, float, int)):
        return value, None
    elif isinstance(value, int) and (int in types or float in types):
        return (value if int in types else float(value)), None
    elif isinstance(value, float) and float in types:
        return value, None
    elif isinstance(value, float) and int in types and value.is_integer():
        return int(value), None
    if isinstance(value, str):
        text = value.strip()
        for t in (int, float):
            if t in types:
                try:
                    return t(text), None
                except ValueError:
                    pass
        if bool in types and text.lower() in ("true", "false"):
            return text.lower() == "true", None
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return value, f"expected {key.type_name()}, got {type(value).__name__} {shown}"


def validate_values(raw: dict[str, Any], sources: dict[str, str], manager) -> tuple[dict[str, Any], list[Problem]]:
    """Type-check and convert the user's values; unknown keys get a "did you mean"."""
    keys = declared_keys(manager)
    broken = [r.name for r in manager.broken_records() + manager.disabled_records()]
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in raw.items():
        where = sources.get(name, "")
        key = keys.get(name)
        if name in manager.key_conflicts:
            problems.append(Problem(name, manager.key_conflicts[name], where))
            continue
        if key is None:
            hint = did_you_mean(name, keys)
            if not hint and broken:
                hint = f" (plugins that failed to load or are blocked may own it: {', '.join(broken)})"
            problems.append(Problem(name, f"unknown key{hint}", where))
            continue
        converted, error = coerce(key, value)
        if error:
            problems.append(Problem(name, error, where))
            continue
        if key.choices is not None and converted is not None and converted not in key.choices:
            allowed = ", ".join(str(c) for c in key.choices if c is not None)
            problems.append(Problem(name, f"'{converted}' is not one of: {allowed}{did_you_mean(converted, [str(c) for c in key.choices if c])}", where))
            continue
        values[name] = converted
    return values, problems


def declared_defaults(manager) -> dict[str, Any]:
    from tuneforge.plugins import DEFAULT_SELECTIONS

    defaults = {name: key.default for name, key in declared_keys(manager).items()}
    defaults.update({k: v for k, v in DEFAULT_SELECTIONS.items() if k in defaults})
    return defaults
