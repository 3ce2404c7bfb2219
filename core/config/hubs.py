"""Models on ModelScope or Modelers (openMind) hubs, as LLaMA-Factory loads them.

With ``USE_MODELSCOPE_HUB=1`` (or ``USE_OPENMIND_HUB=1``) a ``model_name_or_path`` that is not a local
folder is a model id on that hub: ``prepare`` swaps it for the local folder holding the model, so
everything after (checks, loader, tokenizer, chat, export) reads a plain folder. The folder is

1. the hub's own cache, when the model was downloaded before (offline, no package needed):
   - ModelScope: ``$MODELSCOPE_CACHE`` (default ``~/.cache/modelscope/hub``), under ``models/OWNER/NAME``
     (recent modelscope) or ``OWNER/NAME`` (older), with the dots of NAME written ``___`` as modelscope
     does; ``cache_dir`` from the config is looked in first;
   - Modelers: the Hugging Face-like layout ``models--OWNER--NAME/snapshots/REV`` under
     ``$OPENMIND_HUB_CACHE`` (default ``$OPENMIND_HOME/hub``, ``~/.cache/openmind/hub``) or ``cache_dir``;
2. else a download by the hub's package (``modelscope`` / ``openmind``), logged in with
   ``ms_hub_token`` / ``om_hub_token`` when set; a clear error names the package when it is missing.

Light: no torch, no transformers; the hub packages are imported only to download.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import Problem

TRUE = ("1", "true", "yes", "y")


def model_hub() -> str | None:
    """"modelscope" or "openmind" when the environment asks for that hub (LLaMA-Factory's variables)."""
    if os.environ.get("USE_MODELSCOPE_HUB", "0").strip().lower() in TRUE:
        return "modelscope"
    if os.environ.get("USE_OPENMIND_HUB", "0").strip().lower() in TRUE:
        return "openmind"
    return None


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def modelscope_cached(model_id: str, cache_dir: str | None = None) -> Path | None:
    owner, _, name = model_id.partition("/")
    if not name:
        return None
    root = Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope" / "hub").expanduser()
    roots = ([Path(cache_dir).expanduser()] if cache_dir else []) + [root]
    for base in roots:
        for parent in (base / "models", base):
            for folder_name in (name.replace(".", "___"), name):
                folder = parent / owner / folder_name
                if _is_model(folder):
                    return folder
    return None


def openmind_cached(model_id: str, revision: str = "main", cache_dir: str | None = None) -> Path | None:
    if "/" not in model_id:
        return None
    home = Path(os.environ.get("OPENMIND_HOME") or Path.home() / ".cache" / "openmind").expanduser()
    root = Path(os.environ.get("OPENMIND_HUB_CACHE") or home / "hub").expanduser()
    repo_name = "models--" + model_id.replace("/", "--")
    for base in ([Path(cache_dir).expanduser()] if cache_dir else []) + [root]:
        repo = base / repo_name
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo / "refs" / (revision or "main")
        if ref.is_file() and _is_model(snapshots / ref.read_text(encoding="utf-8").strip()):
            return snapshots / ref.read_text(encoding="utf-8").strip()
        if _is_model(snapshots / (revision or "main")):  # a commit hash given as the revision
            return snapshots / revision
        found = sorted((p for p in snapshots.iterdir() if _is_model(p)), key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]
    return None


def _download(hub: str, model_id: str, revision: str, token: str | None, cache_dir: str | None) -> str:
    from ..errors import TuneforgeError

    if hub == "modelscope":
        try:
            from modelscope import snapshot_download
        except ImportError:
            raise TuneforgeError(f"model_name_or_path: {model_id} is on ModelScope (USE_MODELSCOPE_HUB=1) and not in its "
                                 "cache; install its client to download it: pip install modelscope") from None
        if token:
            from modelscope.hub.api import HubApi

            HubApi().login(token)
        return snapshot_download(model_id, revision="master" if revision == "main" else revision, cache_dir=cache_dir)
    try:
        from openmind.utils.hub import snapshot_download
    except ImportError:
        raise TuneforgeError(f"model_name_or_path: {model_id} is on Modelers (USE_OPENMIND_HUB=1) and not in its cache; "
                             "install its client to download it: pip install openmind") from None
    return snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token)


def resolve_hub_model(config) -> list[Problem]:
    """Swap a ModelScope/Modelers model id in ``config.model_name_or_path`` for its local folder."""
    hub = model_hub()
    name = config.get("model_name_or_path")
    if hub is None or not isinstance(name, str) or not name or Path(name).expanduser().exists():
        return []
    revision = config.get("model_revision") or "main"
    cache_dir = config.get("cache_dir")
    if hub == "modelscope":
        folder = modelscope_cached(name, cache_dir)
        token = config.get("ms_hub_token")
    else:
        folder = openmind_cached(name, revision, cache_dir)
        token = config.get("om_hub_token")
    if folder is None:
        from ..errors import TuneforgeError

        try:
            folder = Path(_download(hub, name, revision, token, cache_dir))
        except TuneforgeError as exc:
            return [Problem("model_name_or_path", str(exc).removeprefix("model_name_or_path: "), config.where("model_name_or_path"))]
        except Exception as exc:  # the hub client's own error (network, unknown id): said, not a traceback
            return [Problem("model_name_or_path", f"{name} could not be downloaded from "
                            f"{'ModelScope' if hub == 'modelscope' else 'Modelers'} ({type(exc).__name__}: {exc})",
                            config.where("model_name_or_path"))]
    config.values["model_name_or_path"] = str(folder)
    return []
