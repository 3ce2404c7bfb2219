"""dataset_info.json in LLaMA-Factory's schema: which file a dataset name means, and how to read it.

No torch and no `datasets` import here: `tuneforge check` resolves datasets to plan a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem, did_you_mean

DATA_FILE_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt"}

_KNOWN_ENTRY_KEYS = {
    "file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name",
    "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags", "file_sha1",
}


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
    #: What the stage consumes ("text" for pre-training, "supervised", "pairwise", ...): set by the
    #: core before conversion so a format can return {"text": ...} rows for pre-training.
    data_kind: str = "supervised"

    def column(self, name: str, default: str | None = None) -> Any:
        """The file's column for ``name`` as dataset_info.json maps it; the format plugin gives the default."""
        return self.columns.get(name, default)

    def tag(self, name: str, default: str) -> str:
        return self.tags.get(name, default)


def _default_format() -> str:
    from tuneforge.plugins import DEFAULT_SELECTIONS

    return DEFAULT_SELECTIONS["formatting"]


def read_dataset_info(dataset_dir: str | Path) -> tuple[dict[str, Any], str]:
    """Return the parsed dataset_info.json of ``dataset_dir`` and its path (``{}`` when absent)."""
    path = Path(dataset_dir) / "dataset_info.json"
    if not path.is_file():
        return {}, str(path)
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def resolve_datasets(names: list[str], dataset_dir: str | Path, key: str = "dataset") -> tuple[list[DatasetAttr], list[Problem]]:
    """Map dataset names to attributes, collecting every problem instead of stopping at the first."""
    problems: list[Problem] = []
    try:
        info, info_path = read_dataset_info(dataset_dir)
    except ValueError as exc:
        return [], [Problem(key, str(exc))]
    attrs: list[DatasetAttr] = []
    for name in names:
        direct = Path(name)
        if name not in info and direct.suffix in DATA_FILE_SUFFIXES:
            if not direct.exists():
                problems.append(Problem(key, f"data file '{name}' does not exist"))
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
        for unknown in sorted(set(entry) - _KNOWN_ENTRY_KEYS):
            problems.append(Problem(key, f"unknown field '{unknown}'{did_you_mean(unknown, _KNOWN_ENTRY_KEYS)}", where))
        if "file_name" in entry:
            source, path = "file", str(Path(dataset_dir) / entry["file_name"])
            if not Path(path).exists():
                problems.append(Problem(key, f"file_name '{entry['file_name']}' not found at {path}", where))
        elif "hf_hub_url" in entry:
            source, path = "hf_hub", entry["hf_hub_url"]
        elif "ms_hub_url" in entry:
            source, path = "ms_hub", entry["ms_hub_url"]
        elif "om_hub_url" in entry:
            source, path = "om_hub", entry["om_hub_url"]
        elif "script_url" in entry:
            source, path = "script", entry["script_url"]
        else:
            problems.append(Problem(key, "needs one of file_name, hf_hub_url, ms_hub_url, script_url", where))
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
                columns=dict(entry.get("columns") or {}),
                tags=dict(entry.get("tags") or {}),
            )
        )
    return attrs, problems
