"""Check every key of a config against its owner's declaration: known name, right type, allowed value.

All problems are collected and returned together; nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

from ..errors import Problem, did_you_mean
from ..specs import ConfigKey
from .hf_training_args import HF_KEY_LIMITS, HF_TRAINING_ARGS
from .keys import CORE_KEYS
from .paths import path_problem

_TYPE_BY_NAME = {"bool": bool, "int": int, "float": float, "str": str, "dict": dict, "list": list}


def _hf_key(name: str) -> ConfigKey:
    types, default = HF_TRAINING_ARGS[name]
    return ConfigKey(name, tuple(_TYPE_BY_NAME[t] for t in types), default, "Hugging Face TrainingArguments",
                     **HF_KEY_LIMITS.get(name, {}))


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
        if key.choices is not None and converted is not None and not _is_choice(converted, key.choices):
            allowed = ", ".join(str(c) for c in key.choices if c is not None)
            wrong = next((v for v in converted if not _is_choice(v, key.choices)), converted) if isinstance(converted, list) else converted
            problems.append(Problem(name, f"'{wrong}' is not one of: {allowed}{did_you_mean(wrong, [str(c) for c in key.choices if c])}", where))
            continue
        message = key.range_problem(converted) if converted is not None else None
        if message is None and key.path and converted not in (None, "") and converted not in key.special:
            message = path_problem(key.path, converted)
        if message:
            problems.append(Problem(name, message, where))
            continue
        values[name] = converted
    problems += exclusion_problems(values, sources, keys)
    return values, problems


def _is_choice(value: Any, choices: tuple) -> bool:
    """``value`` is one of ``choices``; a list (``report_to: [wandb, tensorboard]``) when each item is."""
    if isinstance(value, list):
        return all(_is_choice(item, choices) for item in value)
    try:
        return value in choices
    except TypeError:  # an unhashable or uncomparable value is no choice
        return False


def exclusion_problems(values: dict[str, Any], sources: dict[str, str], keys: dict[str, ConfigKey]) -> list[Problem]:
    """Keys set together that exclude each other (a key's ``excludes``), each pair named once with both places."""
    problems: list[Problem] = []
    seen: set[frozenset] = set()
    for name, value in values.items():
        key = keys.get(name)
        if key is None or not value:
            continue
        for other in key.excludes:
            pair = frozenset((name, other))
            if values.get(other) and pair not in seen:
                seen.add(pair)
                here, there = sources.get(name, "command line"), sources.get(other, "command line")
                problems.append(Problem(name, f"{name} ({here}) and {other} ({there}) cannot both be set: keep one of them", here))
    return problems


def relation_problems(config, needs_data: bool = True) -> list[Problem]:
    """Values that are fine alone but not together (no file is read). ``needs_data=False``: the verb
    reads no training rows (plan, export, chat), so a training config without its data is no problem there."""
    problems: list[Problem] = []
    where = config.where
    trains = bool(config.get("do_train")) if config.is_set("do_train") else None
    if needs_data and trains and not config.get("dataset"):
        problems.append(Problem("dataset", "do_train: true needs training data: set dataset (names from dataset_info.json, "
                                "or a data file); for predictions only, set do_train: false and eval_dataset", where("do_train")))
    epochs, steps = config.get("num_train_epochs"), config.get("max_steps")
    if trains is not False and epochs is not None and float(epochs) == 0 and (steps is None or int(steps) < 1):
        problems.append(Problem("num_train_epochs", "is 0 and max_steps is not set: training would run 0 steps; "
                                "set num_train_epochs above 0 or max_steps to the number of steps", where("num_train_epochs")))
    return problems


def relation_warnings(config) -> list[str]:
    """Values set together where one does nothing: said out loud, never ignored silently."""
    out = []
    if config.get("eval_dataset") and (config.get("val_size") or 0) > 0:
        out.append(f"val_size ({config.where('val_size')}) is not used: eval_dataset ({config.where('eval_dataset')}) is "
                   "the evaluation data (LLaMA-Factory refuses both; remove one)")
    from ..train.ray_launcher import ray_warnings

    return out + ray_warnings(config)


def declared_defaults(manager) -> dict[str, Any]:
    from tuneforge.plugins import DEFAULT_SELECTIONS

    defaults = {name: key.default for name, key in declared_keys(manager).items()}
    defaults.update({k: v for k, v in DEFAULT_SELECTIONS.items() if k in defaults})
    return defaults
