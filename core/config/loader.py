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
    try:
        text = decode_utf8(path.read_bytes(), path)
    except ValueError as exc:
        raise ConfigError([Problem("", str(exc))]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("", f"not valid YAML ({reason}); fix the syntax there", where)]) from None
    duplicates = duplicate_keys(node, str(path))
    if duplicates:
        raise ConfigError(duplicates)
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


def decode_utf8(raw: bytes, path: str | Path) -> str:
    """``raw`` as UTF-8 text; ValueError naming the file, the byte offset and the line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte offset {exc.start}: {raw[exc.start:exc.start + 1]!r} "
                         f"{exc.reason}); save the file as UTF-8") from None


def duplicate_keys(node, path: str) -> list[Problem]:
    """A key written twice in one mapping (YAML keeps the last one silently): both lines, at any depth."""
    problems: list[Problem] = []
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in current.value:
                name = str(key_node.value)
                line = key_node.start_mark.line + 1
                if name in first:
                    problems.append(Problem(name, f"set twice, on lines {first[name]} and {line} (YAML would keep only "
                                                  "the last one silently); remove one", f"{path}:{line}"))
                else:
                    first[name] = line
                stack.append(value_node)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return sorted(problems, key=lambda p: int(p.where.rsplit(":", 1)[1]))


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
