"""Read dataset files, convert each row with its format plugin, and report bad rows precisely.

Every bad row is reported as ``file:row N: field: reason`` (up to a limit, all in one error); with
``skip_bad_rows: true`` they are dropped and counted instead. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import DataError, RowError, TuneforgeError
from .registry import DatasetAttr

logger = logging.getLogger(__name__)
MAX_REPORTED_ROWS = 20


def read_rows(attr: DatasetAttr) -> list[dict]:
    """All rows of a dataset as dicts. Local files are read directly; hub ids go through `datasets`."""
    if attr.source != "file":
        return _read_hub(attr)
    path = Path(attr.path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    rows: list[dict] = []
    for file in files:
        rows += _read_file(file)
    return rows


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
            if isinstance(data, dict):
                data = [data]
            return list(data)
        if suffix == ".jsonl":
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            return rows
        if suffix == ".txt":
            return [{"text": line} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        import datasets

        kind = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}.get(suffix)
        if kind is None:
            raise DataError(f"{path}: unsupported file type '{suffix}' (json, jsonl, csv, parquet, arrow, txt)")
        return list(datasets.load_dataset(kind, data_files=str(path), split="train"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def _read_hub(attr: DatasetAttr) -> list[dict]:
    import datasets

    if attr.source != "hf_hub":
        raise TuneforgeError(f"dataset '{attr.name}': {attr.source} datasets are not supported yet; use hf_hub_url or file_name")
    ds = datasets.load_dataset(attr.path, name=attr.subset, data_dir=attr.folder, split=attr.split)
    return list(ds)


def convert_rows(rows: list[dict], attr: DatasetAttr, convert, *, skip_bad_rows: bool, placeholders: dict | None = None) -> list[dict]:
    examples, bad = [], []
    for index, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise RowError("(row)", f"must be an object, got {type(row).__name__}")
            example = convert(row, attr)
        except RowError as exc:
            bad.append((index + 1, exc.field, exc.reason))
            continue
        if placeholders:
            example = _replace(example, placeholders)
        examples.append(example)
    if bad:
        lines = [f"{attr.path}: row {n}: {field}: {reason}" for n, field, reason in bad[:MAX_REPORTED_ROWS]]
        more = f"\n  ... and {len(bad) - MAX_REPORTED_ROWS} more" if len(bad) > MAX_REPORTED_ROWS else ""
        if not skip_bad_rows:
            raise DataError(
                f"dataset '{attr.name}' has {len(bad)} bad row(s) of {len(rows)}:\n  " + "\n  ".join(lines) + more
                + "\nfix them, or set skip_bad_rows: true to skip them"
            )
        logger.warning("dataset '%s': skipped %d bad row(s) of %d:\n  %s%s", attr.name, len(bad), len(rows), "\n  ".join(lines), more)
        print(f"dataset '{attr.name}': skipped {len(bad)} bad row(s) of {len(rows)} (skip_bad_rows)")
    if not examples:
        raise DataError(f"dataset '{attr.name}' ({attr.path}) has no usable rows")
    return examples


def _replace(value: Any, placeholders: dict) -> Any:
    if isinstance(value, str):
        for key, text in placeholders.items():
            value = value.replace("{{" + str(key) + "}}", str(text))
        return value
    if isinstance(value, list):
        return [_replace(v, placeholders) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, placeholders) for k, v in value.items()}
    return value


def load_examples(ctx, dataset_plans) -> list[dict]:
    """Converted examples of every planned dataset, concatenated, each capped at max_samples."""
    config = ctx.config
    out: list[dict] = []
    for plan in dataset_plans:
        attr = plan.attr
        attr.data_kind = ctx.plan.stage.spec.data_kind
        rows = read_rows(attr)
        if attr.num_samples is not None:
            rows = rows[: attr.num_samples]
        if config.max_samples is not None:
            rows = rows[: config.max_samples]
        if plan.format is not None:
            spec = plan.format.spec
        else:
            name = ctx.manager.hook.tuneforge_detect_dataset_format(path=attr.path, row=rows[0] if rows else {})
            if name is None:
                raise DataError(f"{attr.path}: cannot tell the format of this file; name it in dataset_info.json with 'formatting'")
            spec = ctx.manager.format(name)
            attr.formatting = name
        out += convert_rows(rows, attr, spec.convert, skip_bad_rows=config.skip_bad_rows, placeholders=config.replace_placeholders)
    return out
