"""Read dataset files, convert each row with its format plugin, and report bad rows precisely.

Every bad row is reported as ``file: row N: field: reason`` (N counts the rows of that file from 1;
up to a limit per dataset, every dataset in one error). With ``skip_bad_rows: true`` they are dropped,
and how many and why is printed. Nothing is dropped silently, and no error is ever a bare
"no valid samples".

Local json, jsonl and txt are read here directly (so a row with a wrong type is reported as that row,
not as an Arrow schema error for the whole file); csv, parquet and arrow go through `datasets`, as
do hub datasets.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError, RowError, TuneforgeError
from .example import check_example, kind_of
from .media import attach_media, media_columns, text_only_message
from .registry import DATA_FILE_SUFFIXES, DatasetAttr

logger = logging.getLogger(__name__)
MAX_REPORTED_ROWS = 20
_DATASETS_BUILDERS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class BadRow:
    file: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.field}: {self.reason}"


@dataclass
class Rows:
    """The raw rows of one dataset and the file each came from."""

    rows: list[Any] = field(default_factory=list)
    files: list[tuple[int, str]] = field(default_factory=list)  # (index of the file's first row, path)

    def add(self, path: str, rows: list[Any]) -> None:
        self.files.append((len(self.rows), path))
        self.rows += rows

    def locate(self, index: int) -> tuple[str, int]:
        """(file, 1-based row number within that file) of row ``index``."""
        start, path = 0, ""
        for first, name in self.files:
            if first > index:
                break
            start, path = first, name
        return path, index - start + 1


@dataclass
class Converted:
    """One dataset after conversion: the examples kept and the rows that failed."""

    attr: DatasetAttr
    examples: list[dict]
    checked: int  # rows converted (after num_samples / max_samples)
    total: int  # rows in the files
    bad: list[BadRow]

    def reasons(self) -> list[tuple[str, int]]:
        """("field: reason", count) of the bad rows, most frequent first."""
        return Counter(f"{b.field}: {b.reason}" for b in self.bad).most_common()


# --- reading ----------------------------------------------------------------------------------


def _files(attr: DatasetAttr) -> list[Path]:
    path = Path(attr.path)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    unsupported = [p.name for p in files if p.suffix.lower() not in DATA_FILE_SUFFIXES]
    if unsupported:
        raise DataError(f"dataset '{attr.name}': {path} holds files of unsupported types: {', '.join(unsupported[:5])} "
                        f"(json, jsonl, csv, tsv, parquet, arrow, txt)")
    if not files:
        raise DataError(f"dataset '{attr.name}': folder {path} holds no data files")
    return files


def data_files(attr: DatasetAttr) -> list[Path]:
    """The local files of a dataset (empty for hub datasets)."""
    return _files(attr) if attr.source == "file" else []


def read_rows(attr: DatasetAttr, config=None) -> Rows:
    """All rows of a dataset. Local files are read directly; hub ids go through `datasets`."""
    rows = Rows()
    if attr.source != "file":
        rows.add(attr.path, _hub_dataset(attr, config, streaming=False).to_list())
        return rows
    for file in _files(attr):
        rows.add(str(file), list(_iter_file(file)))
    return rows


def iter_rows(attr: DatasetAttr, config=None) -> Iterator[tuple[str, int, Any]]:
    """``(file, row number, row)`` one at a time, for streaming."""
    if attr.source != "file":
        for number, row in enumerate(_hub_dataset(attr, config, streaming=True), start=1):
            yield attr.path, number, row
        return
    for file in _files(attr):
        for number, row in enumerate(_iter_file(file, streaming=True), start=1):
            yield str(file), number, row


@dataclass(frozen=True)
class BrokenLine:
    """A JSON-lines line that does not parse: a bad row like any other (skip_bad_rows skips it)."""

    line: int
    reason: str


def _text(path: Path) -> str:
    from ..config.loader import decode_utf8

    try:
        return decode_utf8(path.read_bytes(), path)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _utf8_lines(path: Path) -> Iterator[str]:
    """The lines of ``path`` read one at a time; a non-UTF-8 byte is a DataError naming its offset and line."""
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte offset {offset + exc.start}: "
                                f"{raw[exc.start:exc.start + 1]!r} {exc.reason}); save the file as UTF-8") from None
            offset += len(raw)


def _iter_file(path: Path, streaming: bool = False) -> Iterator[Any]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = _text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            lines = text.splitlines()
            first = next((line for line in lines if line.strip()), "")
            if not first.lstrip().startswith("{") or not _parses(first):  # not JSON lines: one broken document
                raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            yield from _json_lines(path, lines)  # JSON lines in a .json file
            return
        if isinstance(data, dict):
            keys = ", ".join(list(map(str, data))[:5])
            raise DataError(f"{path}: the file is one JSON object (keys: {keys}), not a list of rows: put the rows in a "
                            "JSON array [{...}, {...}], or write one object per line in a .jsonl file")
        if not isinstance(data, list):
            raise DataError(f"{path}: the file holds a JSON {type(data).__name__}, not a list of rows ([{{...}}, {{...}}])")
        yield from data
    elif suffix == ".jsonl":
        yield from _json_lines(path, _utf8_lines(path))
    elif suffix == ".txt":
        for line in _utf8_lines(path):
            if line.strip():
                yield {"text": line.rstrip("\r\n")}
    elif suffix in (".csv", ".tsv"):
        yield from _delimited(path, "\t" if suffix == ".tsv" else ",")
    elif suffix in _DATASETS_BUILDERS:
        import datasets

        ds = datasets.load_dataset(_DATASETS_BUILDERS[suffix], data_files=str(path), split="train", streaming=streaming)
        yield from (ds if streaming else ds.to_list())
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' (json, jsonl, csv, tsv, parquet, arrow, txt)")


def _delimited(path: Path, delimiter: str) -> Iterator[dict]:
    """CSV/TSV rows with every cell as text: a column of numbers is the reply "63", not an int that no
    format accepts (datasets' csv builder would infer int columns)."""
    import csv

    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter=delimiter):
            yield {str(k): v for k, v in row.items() if k is not None}


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _json_lines(path: Path, lines) -> Iterator[Any]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield BrokenLine(number, f"not valid JSON ({exc.msg}, column {exc.colno})")


def _hub_dataset(attr: DatasetAttr, config, streaming: bool):
    """A hub dataset through `datasets` (or ModelScope); not reachable in tests, kept real for users."""
    cache_dir = config.get("cache_dir") if config is not None else None
    if attr.source == "hf_hub":
        import datasets

        token = config.get("hf_hub_token") if config is not None else None
        try:
            return datasets.load_dataset(attr.path, name=attr.subset, data_dir=attr.folder, split=attr.split,
                                         cache_dir=cache_dir, token=token, streaming=streaming)
        except ConnectionError as exc:  # offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or the hub unreachable
            raise TuneforgeError(
                f"dataset '{attr.name}' is on the Hugging Face hub ({attr.path}) and could not be reached ({exc}); "
                "download it once with network access (it is cached), or point dataset_info.json at a local "
                "copy with file_name") from None
    if attr.source == "ms_hub":
        try:
            from modelscope import MsDataset
        except ImportError:
            raise TuneforgeError(f"dataset '{attr.name}' is on ModelScope; install it: pip install modelscope") from None
        token = config.get("ms_hub_token") if config is not None else None
        ds = MsDataset.load(dataset_name=attr.path, subset_name=attr.subset, data_dir=attr.folder, split=attr.split,
                            cache_dir=cache_dir, token=token, use_streaming=streaming)
        return ds.to_hf_dataset() if hasattr(ds, "to_hf_dataset") else ds
    if attr.source == "om_hub":
        try:
            from openmind import OmDataset
        except ImportError:
            raise TuneforgeError(f"dataset '{attr.name}' is on Modelers (openmind); install it: pip install openmind") from None
        return OmDataset.load_dataset(path=attr.path, name=attr.subset, data_dir=attr.folder, split=attr.split,
                                      cache_dir=cache_dir, streaming=streaming,
                                      token=config.get("om_hub_token") if config is not None else None)
    raise TuneforgeError(f"dataset '{attr.name}': {attr.source} datasets are not supported (datasets 5 runs no loading scripts); "
                         "use file_name or hf_hub_url")


# --- conversion -------------------------------------------------------------------------------


def select_indices(count: int, attr: DatasetAttr, config) -> list[int]:
    """Which rows are used: ``num_samples`` (sampled with the seed, repeating rows past the end, as
    LLaMA-Factory does), then the first ``max_samples``."""
    indices = list(range(count))
    if attr.num_samples is not None:
        rng = random.Random(config.seed)
        rng.shuffle(indices)
        indices = indices[: attr.num_samples]
        if attr.num_samples > count and count:
            indices += [rng.randrange(count) for _ in range(attr.num_samples - count)]
    if config.max_samples is not None:
        indices = indices[: config.max_samples]
    return indices


def examples_kind(ctx, kind: str) -> str:
    """The built-in kind of examples rows of ``kind`` are made from: itself, or for a kind a stage
    defines, its ``DataKind.examples``."""
    from ..specs import BUILTIN_DATA_KINDS

    spec = ctx.plan.stage.spec if getattr(ctx, "plan", None) is not None else None
    if kind not in BUILTIN_DATA_KINDS and spec is not None and spec.data_kind == kind and spec.data is not None:
        return spec.data.examples
    return kind


def check_kind(attr: DatasetAttr, kind: str) -> None:
    """The dataset fits what the stage consumes (a dataset-level error, before any row is read)."""
    attr.data_kind = kind
    have = kind_of(attr)
    if kind == "text" or have == kind or (kind == "prompt" and have == "supervised"):
        return
    needs = {
        "supervised": "conversations with responses (no ranking, no kto_tag)",
        "pairwise": "preference rows: set \"ranking\": true and the chosen/rejected columns in dataset_info.json",
        "kto": "rows with a kto_tag column (\"columns\": {\"kto_tag\": \"label\"} in dataset_info.json)",
        "prompt": "conversations (the model writes the replies; a reply in the data is kept as the reference)",
    }[kind]
    raise DataError(f"dataset '{attr.name}' has {have} rows, but this stage trains on {kind} data: {needs}")


def resolve_format(ctx, plan, first_row):
    """The format spec of a planned dataset; detected from the first row when the plan left it open."""
    if plan.format is not None:
        return plan.format.spec
    attr = plan.attr
    name = ctx.manager.hook.tuneforge_detect_dataset_format(path=attr.path, row=first_row if isinstance(first_row, dict) else {})
    if name is None:
        raise DataError(f"{attr.path}: cannot tell the format of this file; register it in dataset_info.json with 'formatting'")
    attr.formatting = name
    return ctx.manager.format(name)


def unmapped_media(attr: DatasetAttr, rows: Rows, config) -> None:
    """Rows that carry images/videos/audios the dataset's columns do not map would lose them silently."""
    from .registry import media_message

    for index, row in enumerate(rows.rows):
        column = _unmapped_media_field(attr, row)
        if column:
            file, number = rows.locate(index)
            raise DataError(media_message(attr.name, column, f"{file}: row {number} has a non-empty '{column}' field", config))


def _unmapped_media_field(attr: DatasetAttr, row: Any) -> str | None:
    from .registry import MEDIA_COLUMNS

    if isinstance(row, dict):
        for column in MEDIA_COLUMNS:
            if row.get(column) and column not in attr.columns:  # "images": null in columns drops them on purpose
                return column
    return None


def convert_row(row: Any, attr: DatasetAttr, convert, kind: str, placeholders: dict | None, media_dir=None) -> dict:
    """One raw row to a checked example (with its media, when ``media_dir`` is given); raises RowError."""
    if isinstance(row, BrokenLine):
        raise RowError(f"line {row.line}", row.reason)
    if not isinstance(row, dict):
        raise RowError("(row)", f"must be an object, got {type(row).__name__}")
    example = convert(row, attr)
    if placeholders:
        example = _replace(example, placeholders)
    check_example(example, kind_of(attr))
    if media_dir is not None:
        attach_media(row, attr, example, media_dir)
    return example


def _media_dir(ctx, attr: DatasetAttr):
    """Where the dataset's media paths are relative to (None: it has no media column); a media column
    with a text-only template is a DataError here too (`check` says it first)."""
    columns = media_columns(attr)
    if not columns:
        return None
    media = getattr(ctx, "media", None)
    template = ctx.plan.template.name if getattr(ctx.plan, "template", None) is not None else None
    for column in columns:
        if media is None or column not in media.modalities:
            raise DataError(text_only_message(attr, column, template, takes=getattr(media, "modalities", ())))
    return ctx.config.get("media_dir") or ctx.config.dataset_dir


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


def convert_dataset(ctx, plan, kind: str, *, every_row: bool = False) -> Converted:
    """Read and convert one planned dataset. ``every_row`` checks rows past max_samples too (the doctor)."""
    attr = plan.attr
    config = ctx.config
    kind = examples_kind(ctx, kind)
    check_kind(attr, kind)
    rows = read_rows(attr, config)
    if not rows.rows:
        raise DataError(f"dataset '{attr.name}' ({attr.path}) has no rows")
    spec = resolve_format(ctx, plan, next((r for r in rows.rows if isinstance(r, dict)), rows.rows[0]))
    unmapped_media(attr, rows, ctx.config)
    media_dir = _media_dir(ctx, attr)
    selected = select_indices(len(rows.rows), attr, config)
    wanted = set(selected)
    examples_at: dict[int, dict] = {}
    bad: list[BadRow] = []
    for index in range(len(rows.rows)) if every_row else sorted(wanted):
        try:
            examples_at[index] = convert_row(rows.rows[index], attr, spec.convert, kind, config.replace_placeholders, media_dir)
        except RowError as exc:
            bad.append(BadRow(*rows.locate(index), exc.field, exc.reason))
    examples = [examples_at[i] for i in selected if i in examples_at]
    checked = len(rows.rows) if every_row else len(wanted)
    return Converted(attr, examples, checked, len(rows.rows), bad)


def bad_rows_message(results: list[Converted]) -> str:
    blocks = []
    for result in results:
        if not result.bad:
            continue
        lines = [str(b) for b in result.bad[:MAX_REPORTED_ROWS]]
        if len(result.bad) > MAX_REPORTED_ROWS:
            lines.append(f"... and {len(result.bad) - MAX_REPORTED_ROWS} more")
        blocks.append(f"dataset '{result.attr.name}' has {len(result.bad)} bad row(s) of {result.checked}:\n  " + "\n  ".join(lines))
    return "\n".join(blocks)


def skip_summary(result: Converted) -> str:
    why = "; ".join(f"{n}x {reason}" for reason, n in result.reasons()[:5])
    return f"dataset '{result.attr.name}': skipped {len(result.bad)} bad row(s) of {result.checked} (skip_bad_rows): {why}"


def load_examples(ctx, dataset_plans, kind: str = "supervised") -> list[Converted]:
    """Converted examples of every planned dataset; one DataError naming every bad row of every dataset."""
    results = [convert_dataset(ctx, plan, kind) for plan in dataset_plans]
    message = bad_rows_message(results)
    if message and not ctx.config.skip_bad_rows:
        raise DataError(message + "\nfix them, or set skip_bad_rows: true to skip them")
    for result in results:
        if result.bad:
            logger.warning("%s", bad_rows_message([result]))
            print(skip_summary(result))
        if not result.examples:
            raise DataError(f"dataset '{result.attr.name}' ({result.attr.path}): all {result.checked} rows are bad; "
                            f"the first: {result.bad[0] if result.bad else '-'}")
    return results


def stream_examples(ctx, plan, kind: str) -> Iterator[dict]:
    """Examples of one dataset, converted as they are read (streaming). A bad row stops the run with
    its file:row error, or is skipped with a warning under skip_bad_rows (their count is printed when
    the stream ends)."""
    attr = plan.attr
    config = ctx.config
    kind = examples_kind(ctx, kind)
    check_kind(attr, kind)
    spec = None
    skipped = 0
    produced = 0
    try:
        for file, number, row in iter_rows(attr, config):
            if config.max_samples is not None and produced >= config.max_samples:
                return
            media = _unmapped_media_field(attr, row)
            if media:
                from .registry import media_message

                raise DataError(media_message(attr.name, media, f"{file}: row {number} has a non-empty '{media}' field", config))
            if spec is None and not isinstance(row, BrokenLine):  # the first row that parses tells the format
                spec = resolve_format(ctx, plan, row)
            try:
                if spec is None:
                    raise RowError(f"line {row.line}", row.reason)
                example = convert_row(row, attr, spec.convert, kind, config.replace_placeholders, _media_dir(ctx, attr))
            except RowError as exc:
                bad = BadRow(file, number, exc.field, exc.reason)
                if not config.skip_bad_rows:
                    raise DataError(f"dataset '{attr.name}': {bad}\n(streaming stops at the first bad row; "
                                    "`tuneforge data CONFIG streaming=false` lists them all; or set skip_bad_rows: true)") from None
                skipped += 1
                if skipped <= MAX_REPORTED_ROWS:
                    logger.warning("dataset '%s': skipped bad row %s", attr.name, bad)
                continue
            produced += 1
            yield example
    finally:
        if skipped:
            print(f"dataset '{attr.name}': skipped {skipped} bad row(s) while streaming (skip_bad_rows)", flush=True)
