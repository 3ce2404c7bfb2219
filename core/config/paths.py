"""What a path-valued config key names on disk, checked by `tuneforge check` (ConfigKey.path).

A missing model folder or an ``output_dir`` that is a file used to surface as a traceback after
minutes of loading; here each is named with the key before anything loads. A value that looks like a
hub id (``name`` or ``org/name``) is not a local path and stays allowed for ``model`` and ``adapter``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)?$")


def looks_local(value: str) -> bool:
    """True when ``value`` can only mean a path: it exists, or it is not shaped like a hub id
    (``/abs``, ``./rel``, ``~``, two or more slashes, spaces...), or its first part is a local folder
    (``saves/run`` beside a ``saves`` folder)."""
    path = Path(value).expanduser()
    if path.exists() or not _HUB_ID.match(value):
        return True
    return "/" in value and Path(value.split("/", 1)[0]).is_dir()


def _names(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _first_file_ancestor(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def path_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` does not name what ``kind`` needs (see ConfigKey.path), or None."""
    if not isinstance(value, (str, list, tuple)):
        return None
    for name in _names(value) if kind == "adapter" else [str(value)]:
        message = _one(kind, name)
        if message:
            return message
    return None


def _one(kind: str, value: str) -> str | None:
    path = Path(value).expanduser()
    if kind == "dir":
        if not path.exists():
            return f"{value} is not a folder (it does not exist)"
        return None if path.is_dir() else f"{value} is not a folder (it is a file)"
    if kind == "file":
        if not path.exists():
            return f"{value} is not a file (it does not exist)"
        return None if path.is_file() else f"{value} is not a file (it is a folder)"
    if kind == "exists":
        return None if path.exists() else f"{value} does not exist"
    if kind == "output":
        if path.exists() and not path.is_dir():
            return f"{value} is a file; it must be a folder (existing or not) to write into"
        blocker = _first_file_ancestor(path.absolute())
        return f"{value} cannot be created: {blocker} is a file" if blocker else None
    if kind in ("model", "adapter"):
        if not looks_local(value):
            return None  # a hub id: resolved when the model loads
        if not path.exists():
            what = "a local model folder" if kind == "model" else "a local adapter folder"
            return f"{value} does not exist (it looks like {what}, not a hub id such as org/name); check the path"
        if kind == "adapter":
            return None  # its contents are the adapter loader's to check
        if not path.is_dir():
            return f"{value} is a file; it must be a model folder (with config.json) or a hub id"
        if not (path / "config.json").is_file():
            if (path / "adapter_config.json").is_file():
                return (f"{value} holds an adapter (adapter_config.json), not a base model: set adapter_name_or_path "
                        "to it and model_name_or_path to its base model")
            return f"{value} has no config.json, so it is not a model folder; point it at the folder holding config.json"
        return None
    raise ValueError(f"unknown path kind {kind!r}")
