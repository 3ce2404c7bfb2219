"""ShareGPT rows: a list of ``{from, value}`` turns; tags and columns configurable in dataset_info.json.

As in LLaMA-Factory: a first turn with the system tag is the system prompt (else the ``system``
column); then turns alternate human/observation and gpt/function_call, checked row by row. A
``function_call`` turn becomes a ``function`` turn (an assistant tool call), an ``observation`` turn an
``observation`` turn (the tool's answer). ``tools`` is the column of tool definitions (JSON).
``ranking: true`` rows end with a human turn and carry ``chosen``/``rejected`` turns; a ``kto_tag``
column makes a KTO row. With the default tags, ``user`` and ``assistant`` are accepted for ``human``
and ``gpt``.
"""

from __future__ import annotations

import json

from tuneforge import DatasetFormatSpec, hookimpl
from tuneforge.data.example import finish_conversation, order_problem, tag_roles
from tuneforge.errors import RowError

#: LLaMA-Factory's sharegpt defaults; dataset_info.json "columns" and "tags" override them.
COLUMNS = {"messages": "conversations", "system": None, "tools": None, "chosen": "chosen", "rejected": "rejected", "kto_tag": None}
TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
#: Extra role names accepted while a tag keeps its default.
ALIASES = {"user_tag": ("user",), "assistant_tag": ("assistant",)}


def _content(turn: dict, content_tag: str, where: str, role: str) -> str:
    content = turn.get(content_tag)
    if isinstance(content, str):
        return content
    if role in ("function", "observation") and isinstance(content, (dict, list)):
        return json.dumps(content, ensure_ascii=False)
    if content is None:
        raise RowError(where, f"missing '{content_tag}'")
    raise RowError(where, f"must be a string, got {type(content).__name__}")


def _reply(row: dict, column: str, role_tag: str, content_tag: str, roles: dict) -> str:
    """A chosen/rejected turn: ``{from: gpt, value: ...}`` (a plain string is accepted too)."""
    value = row.get(column)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        if roles.get(value.get(role_tag)) != "assistant":
            raise RowError(f"{column}.{role_tag}", f"must be an assistant turn, got '{value.get(role_tag)}'")
        text = _content(value, content_tag, f"{column}.{content_tag}", "assistant")
    elif value is None:
        raise RowError(column, "missing")
    else:
        raise RowError(column, f"must be a turn with '{role_tag}' and '{content_tag}', got {type(value).__name__}")
    if not text.strip():
        raise RowError(column, "empty response")
    return text


def convert(row: dict, attr) -> dict:
    def col(name):
        return attr.column(name, COLUMNS[name])

    column = col("messages")
    turns = row.get(column)
    if turns is None:
        raise RowError(column, "missing (the conversation)")
    if not isinstance(turns, list) or not turns:
        raise RowError(column, "must be a non-empty list of turns")
    role_tag, content_tag = attr.tag("role_tag", TAGS["role_tag"]), attr.tag("content_tag", TAGS["content_tag"])
    roles = tag_roles(attr, TAGS, ALIASES)

    system = None
    messages: list[dict] = []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"must be an object with '{role_tag}' and '{content_tag}', got {type(turn).__name__}")
        if role_tag not in turn:
            raise RowError(where, f"missing '{role_tag}'")
        role = roles.get(turn[role_tag])
        if role is None:
            raise RowError(f"{where}.{role_tag}", f"unknown role '{turn[role_tag]}'; expected one of {', '.join(roles)}")
        content = _content(turn, content_tag, f"{where}.{content_tag}", role)
        if role == "system":
            if index != 0:
                raise RowError(where, "a system turn may only come first")
            system = content
            continue
        messages.append({"role": role, "content": content})
        problem = order_problem([m["role"] for m in messages])
        if problem:
            raise RowError(f"{where}.{role_tag}", problem[1])
    return finish_conversation(
        row, attr, col, messages=messages, system=system, column=column,
        last_field=f"{column}[{len(turns) - 1}].{content_tag}",
        reply=lambda name: _reply(row, name, role_tag, content_tag, roles), turn="turn", user_turn="human turn",
    )


@hookimpl
def tuneforge_dataset_formats():
    return [
        DatasetFormatSpec(
            name="sharegpt",
            description="multi-turn conversations as {from, value} turns, with tool calls (LLaMA-Factory's sharegpt format).",
            convert=convert,
        )
    ]


@hookimpl(trylast=True)
def tuneforge_detect_dataset_format(path, row):
    if isinstance(row, dict) and isinstance(row.get("conversations"), list):
        return "sharegpt"
    return None
