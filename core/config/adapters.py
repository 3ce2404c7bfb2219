"""``adapter_name_or_path`` checked at `check`: every adapter the config names must be loadable.

Without this a missing folder, a full model given as an adapter, or a truncated adapter file passes
`check` and stops `chat`, `export` or `train` later, after the base model has loaded, with a PEFT or
safetensors traceback. Only files are read (adapter_config.json and the weights' headers), never
tensors, so `check` stays instant. A name that is not a local path but looks like a Hub repo id
("org/name") is left to the Hub, unless HF_HUB_OFFLINE is set and it is not in the local cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import Problem
from ..integrity import file_problem
from ..plugin_manager import split_names

KEY = "adapter_name_or_path"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HINT = "point adapter_name_or_path at the output_dir of an adapter training run (or one of its checkpoint-N folders)"


def apply_adapter_folder(config) -> list[Problem]:
    """``adapter_folder`` (LLaMA-Factory's): the subfolder of each adapter_name_or_path that holds the
    adapter (PEFT's ``subfolder``). The config then names those subfolders, so every reader of
    adapter_name_or_path (methods, reference models, engines, export) loads the right one."""
    sub = config.get("adapter_folder")
    if not sub:
        return []
    where = config.where("adapter_folder")
    adapters = split_names(config.get(KEY))
    if not adapters:
        return [Problem("adapter_folder", f"{sub} is a subfolder of each adapter_name_or_path, which is not set; "
                        "set adapter_name_or_path or remove adapter_folder", where)]
    out, resolved = [], []
    for name in adapters:
        base = Path(os.path.expanduser(name))
        if not base.is_dir():
            out.append(Problem("adapter_folder", f"{name} (adapter_name_or_path) is not a local folder; adapter_folder is "
                               "read inside local adapters only: download the adapter and name its folder", where))
        elif not (base / sub).is_dir():
            found = sorted(p.name for p in base.iterdir() if (p / "adapter_config.json").is_file())
            out.append(Problem("adapter_folder", f"{name} has no subfolder {sub}"
                               + (f" (its adapter subfolders: {', '.join(found)})" if found else ""), where))
        resolved.append(str(base / sub))
    if not out:
        value = config.get(KEY)
        config.values[KEY] = resolved if isinstance(value, list) else ",".join(resolved)
    return out


def adapter_problems(config, recognised=lambda path: False) -> list[Problem]:
    """``recognised(path)``: a method's own AdapterSpec knows the folder (a third-party adapter that is not
    PEFT's layout); its contents are then that method's to check, as long as the folder is there."""
    where = config.where(KEY)
    out = []
    for name in split_names(config.get(KEY)):
        path = Path(os.path.expanduser(name))
        if path.is_dir() and recognised(path) and not (path / "adapter_config.json").is_file():
            continue
        message = adapter_problem(name)
        if message is not None:
            out.append(Problem(KEY, message, where))
    return out


def adapter_problem(name: str) -> str | None:
    """Why the adapter NAME cannot be loaded, with the fix, or None."""
    path = Path(os.path.expanduser(name))
    if not path.exists():
        if _HUB_ID.match(name) and not path.parent.is_dir():
            return _hub_problem(name)
        return f"{name} does not exist (relative paths are read from {Path.cwd()}); {_HINT}"
    if not path.is_dir():
        return f"{name} is a file; {_HINT} (the folder that holds adapter_config.json)"
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        if (path / "config.json").is_file():
            return (f"{name} has no adapter_config.json: it holds a full model, not an adapter; "
                    "set model_name_or_path to it and remove adapter_name_or_path")
        return f"{name} has no adapter_config.json, so it is not an adapter folder; {_HINT}"
    problem = file_problem(config_file)
    if problem is not None:
        return f"{name}: adapter_config.json {problem}; copy the adapter again or {_HINT}"
    weights = [path / w for w in _ADAPTER_WEIGHTS if (path / w).is_file()]
    if not weights:
        return (f"{name} has adapter_config.json but no adapter weights ({' or '.join(_ADAPTER_WEIGHTS)}): the save did "
                f"not finish or the copy is partial; copy it again or {_HINT}")
    for weight in weights:
        problem = file_problem(weight)
        if problem is not None:
            return f"{name}: {weight.name} {problem}; copy the adapter again or {_HINT}"
    return None


def _hub_problem(name: str) -> str | None:
    """A Hub repo id: fine online (`check` loads nothing); offline it must be in the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(name, "adapter_config.json")
    except Exception:  # an id huggingface_hub refuses: say what we know
        cached = None
    if isinstance(cached, str):
        return None
    return (f"{name} is not a local folder, and HF_HUB_OFFLINE=1 keeps it from being downloaded (it is not in the "
            f"Hugging Face cache); {_HINT}, or unset HF_HUB_OFFLINE to download it")
