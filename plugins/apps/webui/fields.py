"""From a plugin's :class:`~tuneforge.specs.ConfigKey` to a widget and back, without any UI code per plugin.

A key's type, choices and default decide the widget: a checkbox for ``bool``, a number box for
``int``/``float``, a dropdown for keys with ``choices`` (and for booleans whose default is unset, so
"not set" stays expressible), a YAML box for ``dict``, a text box for everything else (comma lists
included, and numbers whose default is unset: an empty box means "unset", which a number box cannot
say). The value read back is converted with the same :func:`~tuneforge.config.validate.coerce`
the config checker uses, so the UI can never accept what `tuneforge check` would reject.

Nothing here imports gradio: the page builder turns a :class:`WidgetSpec` into a component.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from tuneforge.config.validate import coerce
from tuneforge.specs import ConfigKey

#: The dropdown entry that means "leave the key unset" (LLaMA-Factory's UI writes "none" too).
NONE_CHOICE = "none"


@dataclass(frozen=True)
class WidgetSpec:
    """What widget shows one config key, and its initial value.

    ``kind``: ``checkbox``, ``number``, ``dropdown``, ``text`` or ``yaml``.
    """

    kind: str
    value: Any
    choices: tuple[str, ...] = ()
    integer: bool = False


def _types(key: ConfigKey) -> tuple:
    return key.type if isinstance(key.type, tuple) else (key.type,)


def _choice_text(value: Any) -> str:
    return NONE_CHOICE if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def widget_spec(key: ConfigKey) -> WidgetSpec:
    """The widget for ``key``, showing its default."""
    types = _types(key)
    if key.choices is not None:
        choices = tuple(dict.fromkeys(_choice_text(c) for c in (None, *key.choices)))
        return WidgetSpec("dropdown", _choice_text(key.default), choices)
    if types == (bool,):
        if key.default is None:
            return WidgetSpec("dropdown", NONE_CHOICE, (NONE_CHOICE, "true", "false"))
        return WidgetSpec("checkbox", bool(key.default))
    if types and all(t in (int, float) for t in types):
        if key.default is None:  # a number box cannot say "unset" (the browser sends 0): a text box can
            return WidgetSpec("text", "")
        return WidgetSpec("number", key.default, integer=float not in types)
    if dict in types:
        return WidgetSpec("yaml", "" if key.default is None else yaml.safe_dump(key.default, default_flow_style=True).strip())
    return WidgetSpec("text", "" if key.default is None else _plain_text(key.default))


def _plain_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


class WidgetValueError(ValueError):
    """A widget holds a value its key cannot take; the message names the key and why."""


def from_widget(key: ConfigKey, value: Any) -> Any:
    """The config value a widget holds; ``None`` when the widget says "unset"."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        types = _types(key)
        # "none" is the unset entry of a dropdown; for a key that cannot hold text it can mean nothing else
        if text == "" or (text == NONE_CHOICE and (widget_spec(key).kind == "dropdown" or str not in types)):
            return None
        if key.choices is not None:
            for choice in key.choices:
                if choice is not None and _choice_text(choice) == text:
                    return choice
        if str not in types:  # numbers, booleans, lists and mappings written as YAML
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise WidgetValueError(f"{key.name}: not valid YAML ({exc})") from None
        else:
            value = text
    if isinstance(value, float) and value.is_integer() and _types(key) == (int,):
        value = int(value)
    converted, error = coerce(key, value)
    if error:
        raise WidgetValueError(f"{key.name}: {error}")
    return converted


def to_widget(key: ConfigKey, value: Any) -> Any:
    """What the widget shows for a config value (loading saved arguments)."""
    spec = widget_spec(key)
    if spec.kind == "dropdown":
        return _choice_text(value)
    if spec.kind == "checkbox":
        return bool(value)
    if spec.kind == "number":
        return value
    if value is None:
        return ""
    if spec.kind == "yaml":
        return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return _plain_text(value)


def is_default(key: ConfigKey, value: Any) -> bool:
    """Whether a config value equals the key's own default (such keys stay out of the YAML)."""
    if value is None:
        return True
    default = key.default
    if isinstance(default, (list, tuple)) and isinstance(value, str):
        return _plain_text(default) == value
    if _is_number(value) and _is_number(default):
        return float(value) == float(default)
    return type(value) is type(default) and value == default


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
