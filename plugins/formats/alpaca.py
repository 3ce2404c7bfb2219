"""Alpaca rows: instruction / input / output, optional system, tools and history (earlier turns).

As in LLaMA-Factory: the prompt is ``instruction`` and ``input`` joined by a newline; ``history`` is a
list of ``[instruction, response]`` pairs before it. ``ranking: true`` rows carry ``chosen`` and
``rejected`` strings (or an ``output`` list ``[chosen, rejected]``, the older layout); a ``kto_tag``
column makes a KTO row (the response is desirable when true). For pre-training (``pt``) the text is
the prompt (``columns: {prompt: text}`` points it at a ``text`` column; a row with only ``text`` works
too).
"""

from __future__ import annotations

from tuneforge import DatasetFormatSpec, hookimpl
from tuneforge.data.example import bool_field, json_text_field, text_field
from tuneforge.errors import RowError

#: LLaMA-Factory's column names for alpaca files; dataset_info.json "columns" overrides them.
COLUMNS = {
    "prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None,
    "tools": None, "chosen": "chosen", "rejected": "rejected", "kto_tag": None,
}


def _history(row: dict, column: str | None) -> list[dict]:
    if not column or not row.get(column):
        return []
    history = row[column]
    messages = []
    if not isinstance(history, list):
        raise RowError(column, f"must be a list of [instruction, response] pairs, got {type(history).__name__}")
    for index, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise RowError(f"{column}[{index}]", "must be an [instruction, response] pair of strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def convert(row: dict, attr) -> dict:
    def col(name):
        return attr.column(name, COLUMNS[name])

    prompt_col = col("prompt")
    if attr.data_kind == "text" and prompt_col not in row and "prompt" not in attr.columns and "text" in row:
        prompt_col = "text"
    prompt = text_field(row, prompt_col, required=True, what="prompt")
    query = text_field(row, col("query"), required=False)
    content = "\n".join(part for part in (prompt, query) if part)
    if not content.strip():
        raise RowError(prompt_col, "empty prompt")
    if attr.data_kind == "text":
        return {"text": content}

    messages = _history(row, col("history")) + [{"role": "user", "content": content}]
    example = {
        "messages": messages,
        "system": text_field(row, col("system"), required=False) or None,
        "tools": json_text_field(row, col("tools")),
    }
    if attr.ranking:
        response = row.get(col("response"))
        if col("chosen") not in row and isinstance(response, list):  # older layout: output: [chosen, rejected]
            if len(response) != 2 or not all(isinstance(r, str) for r in response):
                raise RowError(col("response"), "a ranking row's output list must be [chosen, rejected] strings")
            chosen, rejected = response
        else:
            chosen = text_field(row, col("chosen"), required=True, what="chosen")
            rejected = text_field(row, col("rejected"), required=True, what="rejected")
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not value.strip():
                raise RowError(col(name), "empty response")
        example.update(chosen=chosen, rejected=rejected)
        return example

    response = text_field(row, col("response"), required=True, what="response")
    if not response.strip():
        raise RowError(col("response"), "empty response")
    messages.append({"role": "assistant", "content": response})
    if col("kto_tag"):
        example["kto_tag"] = bool_field(row, col("kto_tag"))
    return example


@hookimpl
def tuneforge_dataset_formats():
    return [
        DatasetFormatSpec(
            name="alpaca",
            description="instruction/input/output rows (LLaMA-Factory's alpaca format), with optional system, tools and history.",
            convert=convert,
        )
    ]


@hookimpl(trylast=True)
def tuneforge_detect_dataset_format(path, row):
    if isinstance(row, dict) and (("instruction" in row and "output" in row) or set(row) == {"text"}):
        return "alpaca"
    return None
