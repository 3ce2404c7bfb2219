"""dataset_info.json in LLaMA-Factory's schema: which file a dataset name means, and how to read it.

An entry names its data with ``file_name`` (a file or a folder, relative to ``dataset_dir``) or a
hub id (``hf_hub_url``, ``ms_hub_url``, ``om_hub_url``; with several, ``USE_MODELSCOPE_HUB=1`` /
``USE_OPENMIND_HUB=1`` pick the hub as in LLaMA-Factory), plus ``formatting`` (default alpaca),
``ranking``, ``subset``, ``split``, ``folder``, ``num_samples``, ``columns`` and ``tags``.
A config may also name a data file directly (``dataset: path/to/rows.jsonl``); its format is then
detected from its first row. ``dataset_dir: ONLINE`` makes every name a Hugging Face hub id.

:func:`data_problems` holds the config checks of the data keys (streaming needs max_steps, ...).

No torch and no `datasets` import here: `tuneforge check` resolves datasets to plan a run.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem, did_you_mean

DATA_FILE_SUFFIXES = {".json", ".jsonl", ".csv", ".tsv", ".parquet", ".arrow", ".txt"}

_KNOWN_ENTRY_KEYS = {
    "file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name",
    "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags", "file_sha1",
}
#: The column and tag names LLaMA-Factory's schema defines (formats may read others).
KNOWN_COLUMNS = {"prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos",
                 "audios", "chosen", "rejected", "kto_tag", "text"}
KNOWN_TAGS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}


@dataclass
class DatasetAttr:
    """One dataset as named in dataset_info.json (or a data file named directly)."""

    name: str
    source: str  # "file" | "hf_hub" | "ms_hub" | "om_hub" | "script"
    path: str  # file/folder path for "file", the hub id otherwise
    formatting: str | None = None  # None: detect from the file
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    #: What the stage consumes ("text" for pre-training, "supervised", "pairwise", "kto"): set by the
    #: core before conversion so a format can return {"text": ...} rows for pre-training.
    data_kind: str = "supervised"

    def column(self, name: str, default: str | None = None) -> Any:
        """The file's column for ``name`` as dataset_info.json maps it; the format plugin gives the default."""
        return self.columns.get(name, default)

    def tag(self, name: str, default: str) -> str:
        return self.tags.get(name, default)

    def describe(self) -> dict[str, Any]:
        """Everything that decides how rows are read and converted (for cache keys and manifests)."""
        return asdict(self)


def _default_format() -> str:
    from tuneforge.plugins import DEFAULT_SELECTIONS

    return DEFAULT_SELECTIONS["formatting"]


def read_dataset_info(dataset_dir: str | Path) -> tuple[dict[str, Any], str]:
    """Return the parsed dataset_info.json of ``dataset_dir`` and its path (``{}`` when absent)."""
    path = Path(dataset_dir) / "dataset_info.json"
    if not path.is_file():
        return {}, str(path)
    from ..config.loader import decode_utf8

    text = decode_utf8(path.read_bytes(), path)
    try:
        info = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except _DuplicateKey as exc:
        lines = [i + 1 for i, line in enumerate(text.splitlines()) if f'"{exc.key}"' in line.split(":", 1)[0]]
        shown = f" (lines {', '.join(map(str, lines))})" if len(lines) >= 2 else ""
        raise ValueError(f"{path}: '{exc.key}' is defined twice{shown}; JSON would keep only the last one: remove one") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: must be a JSON object of dataset name -> entry")
    return info, str(path)


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicates(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def outside(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` (symlinks and .. resolved) is not inside ``folder``."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return True
    return False


def _escape_problem(key: str, what: str, path: str, dataset_dir, where: str = "") -> Problem:
    return Problem(key, f"{what} resolves to {Path(path).resolve()}, outside dataset_dir {Path(dataset_dir).resolve()}; "
                        "here only files under dataset_dir are read: move the data into it", where)


def _hub_source(entry: dict) -> tuple[str, str] | None:
    """LLaMA-Factory's choice among hub urls: ModelScope / Modelers when asked for by env, else HF."""
    if entry.get("ms_hub_url") and os.environ.get("USE_MODELSCOPE_HUB", "0").lower() in ("1", "true"):
        return "ms_hub", entry["ms_hub_url"]
    if entry.get("om_hub_url") and os.environ.get("USE_OPENMIND_HUB", "0").lower() in ("1", "true"):
        return "om_hub", entry["om_hub_url"]
    for key, source in (("hf_hub_url", "hf_hub"), ("ms_hub_url", "ms_hub"), ("om_hub_url", "om_hub")):
        if entry.get(key):
            return source, entry[key]
    return None


def _entry_problems(entry: dict, key: str, where: str) -> list[Problem]:
    problems = []
    for unknown in sorted(set(entry) - _KNOWN_ENTRY_KEYS):
        problems.append(Problem(key, f"unknown field '{unknown}'{did_you_mean(unknown, _KNOWN_ENTRY_KEYS)}", where))
    types = {"formatting": str, "ranking": bool, "subset": str, "split": str, "folder": str, "num_samples": int,
             "columns": dict, "tags": dict, "file_name": str}
    for name, type_ in types.items():
        value = entry.get(name)
        if value is not None and (not isinstance(value, type_) or (type_ is int and isinstance(value, bool))):
            problems.append(Problem(key, f"'{name}' must be {'an object' if type_ is dict else type_.__name__}, got {type(value).__name__}", where))
    if isinstance(entry.get("num_samples"), int) and entry["num_samples"] < 1:
        problems.append(Problem(key, "'num_samples' must be at least 1", where))
    for group, known in (("columns", KNOWN_COLUMNS), ("tags", KNOWN_TAGS)):
        for name, value in (entry.get(group) or {}).items() if isinstance(entry.get(group), dict) else ():
            if group == "tags" and name not in known:
                problems.append(Problem(key, f"unknown tag '{name}'{did_you_mean(name, known)}; tags are {', '.join(sorted(known))}", where))
            if value is not None and not isinstance(value, str):
                problems.append(Problem(key, f"{group}.{name} must be a string, got {type(value).__name__}", where))
    return problems


def resolve_datasets(names: list[str], dataset_dir: str | Path, key: str = "dataset", *,
                     confine: bool = False) -> tuple[list[DatasetAttr], list[Problem]]:
    """Map dataset names to attributes, collecting every problem instead of stopping at the first.

    ``confine=True`` (the web UI) refuses any data file outside ``dataset_dir``: a ``file_name`` such as
    ``../../etc/passwd`` in a dataset_info.json, or a data file named directly.
    """
    problems: list[Problem] = []
    if str(dataset_dir) == "ONLINE":
        return [DatasetAttr(name=n, source="hf_hub", path=n, formatting=_default_format()) for n in names], []
    try:
        info, info_path = read_dataset_info(dataset_dir)
    except ValueError as exc:
        return [], [Problem(key, str(exc))]
    attrs: list[DatasetAttr] = []
    for name in names:
        direct = Path(name)
        if name not in info and direct.suffix.lower() in DATA_FILE_SUFFIXES:
            if not direct.exists() and (Path(dataset_dir) / direct).exists():
                direct = Path(dataset_dir) / direct
            if not direct.exists():
                problems.append(Problem(key, f"data file '{name}' does not exist"))
                continue
            if confine and outside(direct, dataset_dir):
                problems.append(_escape_problem(key, f"data file '{name}'", str(direct), dataset_dir))
                continue
            attrs.append(DatasetAttr(name=direct.stem, source="file", path=str(direct), formatting=None))
            continue
        if name not in info:
            if not info:
                hint = f"{info_path} does not exist; set dataset_dir to the folder holding it"
            else:
                hint = f"not in {info_path}{did_you_mean(name, info)} available: {', '.join(sorted(info))}"
            problems.append(Problem(key, f"unknown dataset '{name}': {hint}"))
            continue
        entry = info[name]
        where = f"{info_path} [{name}]"
        if not isinstance(entry, dict):
            problems.append(Problem(key, f"entry '{name}' must be an object", info_path))
            continue
        entry_problems = _entry_problems(entry, key, where)
        problems += entry_problems
        if entry_problems:
            continue
        hub = _hub_source(entry)
        if entry.get("file_name"):
            source, path = "file", str(Path(dataset_dir) / entry["file_name"])
            if confine and outside(path, dataset_dir):
                problems.append(_escape_problem(key, f"file_name '{entry['file_name']}'", path, dataset_dir, where))
                continue
            if not Path(path).exists():
                problems.append(Problem(key, f"file_name '{entry['file_name']}' not found at {path}", where))
        elif hub is not None:
            source, path = hub
        elif entry.get("script_url"):
            source, path = "script", str(Path(dataset_dir) / entry["script_url"])
            if confine and outside(path, dataset_dir):
                problems.append(_escape_problem(key, f"script_url '{entry['script_url']}'", path, dataset_dir, where))
                continue
        else:
            problems.append(Problem(key, "needs one of file_name, hf_hub_url, ms_hub_url, om_hub_url", where))
            continue
        attrs.append(
            DatasetAttr(
                name=name,
                source=source,
                path=path,
                formatting=entry.get("formatting", _default_format()),
                ranking=bool(entry.get("ranking", False)),
                subset=entry.get("subset"),
                split=entry.get("split", "train"),
                folder=entry.get("folder"),
                num_samples=entry.get("num_samples"),
                # a media column set to null stays: it says "drop these on purpose" (see media_message)
                columns={k: v for k, v in (entry.get("columns") or {}).items() if v is not None or k in MEDIA_COLUMNS},
                tags=dict(entry.get("tags") or {}),
            )
        )
    return attrs, problems


MEDIA_COLUMNS = ("images", "videos", "audios")


def model_is_multimodal(config) -> bool | None:
    """Whether the local model folder's config.json has a vision/audio part; None when not local."""
    path = config.get("model_name_or_path")
    if not isinstance(path, str) or not (Path(path).expanduser() / "config.json").is_file():
        return None
    try:
        data = json.loads((Path(path).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return isinstance(data, dict) and any(k in data for k in ("vision_config", "audio_config", "visual", "vision_tower",
                                                             "mm_vision_tower", "image_token_index", "image_token_id"))


def media_message(dataset: str, column: str, where: str, config) -> str:
    """The error for media data this version cannot train on (it would be dropped silently)."""
    model = config.get("model_name_or_path") or "the model"
    kind = column[:-1]
    who = (f"{model} is a text-only model" if model_is_multimodal(config) is False
           else "tuneforge trains text-only models in this version")
    return (f"dataset '{dataset}' has the media column '{column}' ({where}), but {who}: its {column} would be dropped and "
            f"<{kind}> trained as plain text. Train it on a vision/audio-language model with LLaMA-Factory, or, to train "
            f"on the text alone on purpose, set \"{column}\": null in the dataset's \"columns\" in dataset_info.json "
            f"(the <{kind}> placeholders then stay in the text as plain words)")


def _names(value) -> list[str]:
    from ..plugin_manager import split_names

    return split_names(value)


def interleave_probabilities(config) -> list[float] | None:
    """``interleave_probs`` as floats ("0.3,0.7" or a list), or None when unset."""
    names = _names(config.interleave_probs)
    return [float(p) for p in names] if names else None


def data_problems(config, data_kind: str | None = None) -> list[Problem]:
    """Config problems of the data keys, all at once (no file is read)."""
    problems: list[Problem] = []
    where = config.where
    max_steps = config.get("max_steps")
    if config.streaming and (max_steps is None or int(max_steps) <= 0):
        problems.append(Problem("streaming", "needs max_steps: a streamed dataset has no length, so the trainer cannot count epochs", where("streaming")))
    val_size = config.val_size or 0
    if val_size < 0:
        problems.append(Problem("val_size", "must be a fraction below 1 or a row count, not negative", where("val_size")))
    if config.streaming and 0 < val_size < 1:
        problems.append(Problem("val_size", "with streaming, val_size must be a row count (>= 1), not a fraction", where("val_size")))
    if config.streaming and config.tokenized_path:
        problems.append(Problem("tokenized_path", "cannot save or load tokenised data while streaming; turn streaming off", where("tokenized_path")))
    try:
        probs = interleave_probabilities(config)
    except ValueError:
        problems.append(Problem("interleave_probs", f"must be numbers, got {config.interleave_probs!r}", where("interleave_probs")))
        probs = None
    if probs is not None:
        count = len(_names(config.dataset))
        if config.mix_strategy == "concat":
            problems.append(Problem("interleave_probs", "is only used with mix_strategy interleave_under or interleave_over", where("interleave_probs")))
        elif len(probs) != count:
            problems.append(Problem("interleave_probs", f"has {len(probs)} value(s) for {count} dataset(s)", where("interleave_probs")))
        elif abs(sum(probs) - 1) > 1e-6 or any(p < 0 for p in probs):
            problems.append(Problem("interleave_probs", f"must be non-negative and sum to 1, got {probs}", where("interleave_probs")))
    if data_kind in ("pairwise", "kto") and (config.packing or config.neat_packing):
        problems.append(Problem("packing", f"is not supported for {data_kind} data (preference rows are compared whole)", where("packing")))
    if data_kind == "prompt" and (config.packing or config.neat_packing):
        problems.append(Problem("packing", "is not supported when the model writes the replies (each prompt is generated from alone)", where("packing")))
    return problems
