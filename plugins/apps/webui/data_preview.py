"""The Train tab's data preview: dataset names, the first rows of a dataset, and the data doctor.

Rows are read straight from the file (no tokenizer, instant). "Check data" runs `tuneforge data` on
the config Start would run, in a subprocess like every job of the page, and turns its report into
text plus one rendered example whose trained tokens are marked (the doctor colours them green with
``--color always``; the marks become highlighted spans here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tuneforge.data.doctor import GREEN, RESET
from tuneforge.data.registry import read_dataset_info, resolve_datasets

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TRAINED = "trained"


def dataset_names(dataset_dir: str | Path) -> list[str]:
    """The names dataset_info.json defines (empty when the folder has none)."""
    try:
        info, _ = read_dataset_info(dataset_dir or "data")
    except ValueError:
        return []
    return list(info)


def preview_rows(dataset_dir: str | Path, name: str, limit: int = 10) -> tuple[list[str], list[list[str]], int | None]:
    """Column names, the first ``limit`` rows as text, and the row count when the file tells it cheaply.

    Raises ValueError with the reason when the dataset cannot be previewed from a local file, or when
    its dataset_info.json entry points outside ``dataset_dir`` (the page reads nothing outside it).
    """
    attrs, problems = resolve_datasets([name], dataset_dir or "data", confine=True)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    attr = attrs[0]
    if attr.source != "file":
        raise ValueError(f"{name} is on the hub ({attr.path}); only local files are previewed")
    path = Path(attr.path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no data file")
    rows, total = _read_rows(files[0], limit)
    headers: list[str] = []
    for row in rows:
        headers += [k for k in row if k not in headers]
    return headers, [[_cell(row.get(h)) for h in headers] for row in rows], total


def _read_rows(path: Path, limit: int) -> tuple[list[dict], int | None]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) >= limit:
                    break
        return rows, None
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        return [r if isinstance(r, dict) else {"value": r} for r in data[:limit]], len(data)
    if suffix == ".txt":
        with path.open(encoding="utf-8") as f:
            return [{"text": line.rstrip("\n")} for _, line in zip(range(limit), f)], None
    raise ValueError(f"{path.name}: the preview reads .json, .jsonl and .txt files; `Check data` reads every format")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def run_doctor(config: dict, timeout: float = 600) -> tuple[int, str, list[tuple[str, str | None]]]:
    """Run `tuneforge data` on ``config``; return its exit status, its report and the marked example
    as ``(text, "trained" | None)`` spans. Data outside ``dataset_dir`` is refused before anything runs."""
    refused = escaping_data(config)
    if refused:
        return 2, refused, []
    with tempfile.TemporaryDirectory(prefix="tuneforge-webui-data-") as folder:
        path = Path(folder) / "data_check.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        result = subprocess.run([sys.executable, "-m", "tuneforge.cli.main", "data", str(path), "--color", "always"],
                                capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    report, example = split_report(result.stdout)
    if result.returncode != 0 and result.stderr.strip():
        report = (report + "\n" + _ANSI.sub("", result.stderr)).strip()
    return result.returncode, report, example


def escaping_data(config: dict) -> str:
    """The reasons, one per line, why datasets of ``config`` are refused: a file outside its dataset_dir."""
    from tuneforge.plugin_manager import split_names

    dataset_dir = config.get("dataset_dir") or "data"
    lines = []
    for key in ("dataset", "eval_dataset"):
        names = split_names(config.get(key))
        if not names or str(dataset_dir) == "ONLINE":
            continue
        _, problems = resolve_datasets(names, dataset_dir, key, confine=True)
        lines += [str(p) for p in problems if "outside dataset_dir" in p.message]
    return "\n".join(lines)


def split_report(stdout: str) -> tuple[str, list[tuple[str, str | None]]]:
    """The doctor's text with the rendered example taken out, and that example as marked spans."""
    lines = stdout.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("example (first row of")), None)
    if start is None:
        return _ANSI.sub("", stdout).strip(), []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("--- ") and "tokens" in lines[i]), len(lines) - 1)
    example_text = "\n".join(lines[start + 1 : end])
    report_lines = lines[: start + 1] + lines[end:]
    return _ANSI.sub("", "\n".join(report_lines)).strip(), marked_spans(example_text)


def marked_spans(text: str) -> list[tuple[str, str | None]]:
    """``GREEN...RESET`` runs as trained spans, the rest as plain ones."""
    spans: list[tuple[str, str | None]] = []
    position = 0
    while True:
        begin = text.find(GREEN, position)
        if begin < 0:
            break
        end = text.find(RESET, begin)
        end = len(text) if end < 0 else end
        if begin > position:
            spans.append((text[position:begin], None))
        spans.append((text[begin + len(GREEN) : end], TRAINED))
        position = end + len(RESET)
    if position < len(text):
        spans.append((text[position:], None))
    return [(_ANSI.sub("", t), label) for t, label in spans if t]
