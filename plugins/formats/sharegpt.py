"""ShareGPT rows: a list of {from, value} turns (tags configurable in dataset_info.json)."""

from __future__ import annotations

from tuneforge import DatasetFormatSpec, hookimpl
from tuneforge.errors import RowError


#: LLaMA-Factory's sharegpt defaults; dataset_info.json "columns" and "tags" override them.
COLUMNS = {"messages": "conversations", "system": None, "tools": None, "chosen": "chosen", "rejected": "rejected"}
TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}


def convert(row: dict, attr) -> dict:
    def col(name):
        return attr.column(name, COLUMNS[name])

    def tag(name):
        return attr.tag(name, TAGS[name])

    column = col("messages")
    turns = row.get(column)
    if not isinstance(turns, list) or not turns:
        raise RowError(column, "must be a non-empty list of turns")
    role_tag, content_tag = tag("role_tag"), tag("content_tag")
    roles = {
        tag("user_tag"): "user",
        tag("assistant_tag"): "assistant",
        tag("observation_tag"): "user",
        tag("function_tag"): "assistant",
        tag("system_tag"): "system",
    }
    system = None
    sys_col = col("system")
    if sys_col and isinstance(row.get(sys_col), str):
        system = row[sys_col]
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_tag not in turn or content_tag not in turn:
            raise RowError(f"{column}[{index}]", f"each turn needs '{role_tag}' and '{content_tag}'")
        role = roles.get(turn[role_tag])
        if role is None:
            raise RowError(f"{column}[{index}].{role_tag}", f"unknown role '{turn[role_tag]}'; expected one of {', '.join(roles)}")
        if role == "system":
            if index != 0:
                raise RowError(f"{column}[{index}]", "a system turn may only come first")
            system = str(turn[content_tag])
            continue
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected:
            raise RowError(f"{column}[{index}].{role_tag}", f"expected a {expected} turn here (turns must alternate user/assistant)")
        messages.append({"role": role, "content": str(turn[content_tag])})
    if attr.data_kind == "text":
        return {"text": "\n".join(m["content"] for m in messages)}
    if attr.ranking:
        out = {"messages": messages, "system": system}
        for key in ("chosen", "rejected"):
            value = row.get(attr.column(key))
            if not isinstance(value, dict) or content_tag not in value:
                raise RowError(attr.column(key), f"must be a turn with '{content_tag}'")
            out[key] = str(value[content_tag])
        return out
    if len(messages) % 2 != 0:
        raise RowError(column, "the conversation must end with an assistant turn")
    if not messages[-1]["content"].strip():
        raise RowError(f"{column}[{len(turns) - 1}]", "empty response")
    return {"messages": messages, "system": system}


@hookimpl
def tuneforge_dataset_formats():
    return [
        DatasetFormatSpec(
            name="sharegpt",
            description="multi-turn conversations as {from, value} turns (LLaMA-Factory's sharegpt format).",
            convert=convert,
        )
    ]


@hookimpl(trylast=True)
def tuneforge_detect_dataset_format(path, row):
    if isinstance(row, dict) and isinstance(row.get("conversations"), list):
        return "sharegpt"
    return None
