"""Read a YAML (or JSON) config and ``key=value`` overrides, remembering where each key came from.

Where a key came from (file and line, or the command line) goes into every error about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, Problem


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the mapping in ``path`` and, per top-level key, ``"file:line"``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem("", f"config file not found: {path}")])
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"not valid YAML ({reason}); fix the syntax there", where)]) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError([Problem("", f"the config must be a mapping of key: value, got {type(data).__name__}", str(path))])
    sources: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            sources[str(key_node.value)] = f"{path}:{key_node.start_mark.line + 1}"
    data = {str(k): v for k, v in data.items()}
    return data, sources


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, str], list[Problem]]:
    """Parse ``key=value`` words; values are read as YAML scalars (``lora_rank=8`` is an int)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_") if key.startswith("--") else key.strip()
        if not sep or not key:
            problems.append(Problem("", f"override '{item}' is not key=value (e.g. lora_rank=16)", "command line"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        values[key] = value
        sources[key] = "command line"
    return values, sources, problems
