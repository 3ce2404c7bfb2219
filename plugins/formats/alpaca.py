"""Alpaca rows: instruction / input / output, optional system and history (pairs of earlier turns)."""

from __future__ import annotations

from tuneforge import DatasetFormatSpec, hookimpl
from tuneforge.errors import RowError


def _text(row: dict, column: str | None, field: str, required: bool) -> str:
    if not column:
        return ""
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(column, f"missing ({field})")
        return ""
    if not isinstance(value, str):
        raise RowError(column, f"must be a string, got {type(value).__name__}")
    return value


#: LLaMA-Factory's column names for alpaca files; dataset_info.json "columns" overrides them.
COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None,
           "chosen": "chosen", "rejected": "rejected"}


def convert(row: dict, attr) -> dict:
    def col(name):
        return attr.column(name, COLUMNS[name])

    messages = []
    history_col = col("history")
    history = row.get(history_col) if history_col else None
    if history:
        if not isinstance(history, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in history):
            raise RowError(history_col, "must be a list of [instruction, response] pairs")
        for old_prompt, old_response in history:
            messages += [{"role": "user", "content": str(old_prompt)}, {"role": "assistant", "content": str(old_response)}]
    prompt = _text(row, col("prompt"), "prompt", required=True)
    query = _text(row, col("query"), "query", required=False)
    content = "\n".join(part for part in (prompt, query) if part)
    if not content:
        raise RowError(col("prompt"), "empty prompt")
    if attr.data_kind == "text":
        return {"text": content}
    messages.append({"role": "user", "content": content})
    system = _text(row, col("system"), "system", required=False) or None
    if attr.ranking:
        chosen = _text(row, col("chosen"), "chosen", required=True)
        rejected = _text(row, col("rejected"), "rejected", required=True)
        return {"messages": messages, "system": system, "chosen": chosen, "rejected": rejected}
    response = _text(row, col("response"), "response", required=True)
    if not response.strip():
        raise RowError(col("response"), "empty response")
    messages.append({"role": "assistant", "content": response})
    return {"messages": messages, "system": system}


@hookimpl
def tuneforge_dataset_formats():
    return [
        DatasetFormatSpec(
            name="alpaca",
            description="instruction/input/output rows (LLaMA-Factory's alpaca format), with optional system and history.",
            convert=convert,
        )
    ]


@hookimpl(trylast=True)
def tuneforge_detect_dataset_format(path, row):
    if isinstance(row, dict) and "instruction" in row and "output" in row:
        return "alpaca"
    return None
