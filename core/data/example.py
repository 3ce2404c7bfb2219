"""The common example shape every dataset format produces, and the checks the core runs on it.

A format plugin's ``convert(row, attr)`` returns one of:

- supervised: ``{"messages": [...], "system": str | None, "tools": str | None}``; messages alternate
  user/observation (even positions) and assistant/function (odd positions) and end with an
  assistant or function turn. A ``function`` turn is an assistant tool call; its content is JSON.
- pairwise (``ranking: true``): the same, ending with a user/observation turn, plus ``"chosen"`` and
  ``"rejected"`` (the two assistant replies, strings).
- kto (a ``kto_tag`` column): the supervised shape plus ``"kto_tag": bool``.
- text (pre-training, ``attr.data_kind == "text"``): ``{"text": str}``.

Format plugins check their own columns and raise :class:`~tuneforge.errors.RowError` naming the
file's field; :func:`check_example` is the core's safety net for any plugin, run on every converted
row, so a third-party format cannot hand the tokeniser a broken conversation.
"""

from __future__ import annotations

from typing import Any

from ..errors import RowError

#: Roles allowed at even (0, 2, ...) and odd (1, 3, ...) positions of ``messages``.
EVEN_ROLES = ("user", "observation")
ODD_ROLES = ("assistant", "function")

#: What each data kind needs (see the module docstring).
KINDS = ("text", "supervised", "pairwise", "kto")


def order_problem(roles: list[str]) -> tuple[int, str] | None:
    """``(index, reason)`` of the first turn that breaks the alternation, or None."""
    for index, role in enumerate(roles):
        expected = EVEN_ROLES if index % 2 == 0 else ODD_ROLES
        if role not in expected:
            return index, (
                f"expected {' or '.join(expected)} here, got {role} "
                f"(turns must alternate {'/'.join(EVEN_ROLES)} and {'/'.join(ODD_ROLES)})"
            )
    return None


def kind_of(attr) -> str:
    """The kind of example a dataset entry yields: text, pairwise, kto or supervised."""
    if attr.data_kind == "text":
        return "text"
    if attr.ranking:
        return "pairwise"
    if attr.column("kto_tag"):
        return "kto"
    return "supervised"


def check_example(example: Any, kind: str) -> None:
    """Raise RowError when a converted example does not have the shape ``kind`` needs."""
    if not isinstance(example, dict):
        raise RowError("(converted)", f"the format returned {type(example).__name__}, not a dict")
    if kind == "text":
        text = example.get("text")
        if not isinstance(text, str) or not text.strip():
            raise RowError("text", "empty text" if isinstance(text, str) else "missing text")
        return
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RowError("messages", "no conversation turns")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise RowError(f"messages[{index}]", "each turn needs a role and a string content")
    for key in ("system", "tools"):
        if example.get(key) is not None and not isinstance(example[key], str):
            raise RowError(key, f"must be a string, got {type(example[key]).__name__}")
    problem = order_problem([m.get("role") for m in messages])
    if problem:
        raise RowError(f"messages[{problem[0]}]", problem[1])
    if kind == "pairwise":
        if len(messages) % 2 == 0:
            raise RowError("messages", "a preference row's conversation must end with a user turn")
        for key in ("chosen", "rejected"):
            value = example.get(key)
            if not isinstance(value, str) or not value.strip():
                raise RowError(key, "empty response" if isinstance(value, str) else "missing")
        return
    if len(messages) % 2 != 0:
        raise RowError("messages", "the conversation must end with an assistant turn")
    if not messages[-1]["content"].strip():
        raise RowError(f"messages[{len(messages) - 1}]", "empty response")
    if kind == "kto" and not isinstance(example.get("kto_tag"), bool):
        raise RowError("kto_tag", "must be true or false")


# --- helpers for format plugins: read one field of a raw row, or raise RowError naming it ---------


def text_field(row: dict, column: str | None, *, required: bool, what: str = "") -> str:
    """The string in ``row[column]``; "" when the column is unset or (if not required) absent/null."""
    if not column:
        return ""
    value = row.get(column)
    if value is None:
        if required:
            raise RowError(column, f"missing{f' ({what})' if what else ''}")
        return ""
    if not isinstance(value, str):
        raise RowError(column, f"must be a string, got {type(value).__name__}")
    return value


def json_text_field(row: dict, column: str | None) -> str | None:
    """A JSON-ish field such as ``tools``: a string is kept, a list/dict is dumped, empty gives None."""
    if not column:
        return None
    value = row.get(column)
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, ensure_ascii=False)
    raise RowError(column, f"must be a JSON string, a list or an object, got {type(value).__name__}")


def bool_field(row: dict, column: str) -> bool:
    """A KTO label: true/false (also the strings "true"/"false")."""
    value = row.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value is None:
        raise RowError(column, "missing (kto_tag)")
    raise RowError(column, f"must be true or false, got {type(value).__name__} {value!r}")


#: Tag names in dataset_info.json "tags" -> role of the common shape.
TAG_ROLES = {"user_tag": "user", "assistant_tag": "assistant", "observation_tag": "observation",
             "function_tag": "function", "system_tag": "system"}


def tag_roles(attr, defaults: dict[str, str], aliases: dict[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """Role value as written in the file -> role of the common shape.

    ``defaults`` are the format's tag values; dataset_info.json ``tags`` override them. ``aliases``
    are extra values accepted while a tag keeps its default (sharegpt accepts ``user`` for ``human``).
    """
    out: dict[str, str] = {}
    for tag_name, role in TAG_ROLES.items():
        out.setdefault(attr.tag(tag_name, defaults[tag_name]), role)
        if tag_name not in attr.tags:
            for alias in (aliases or {}).get(tag_name, ()):
                out.setdefault(alias, role)
    return out


def finish_conversation(row: dict, attr, col, *, messages: list[dict], system, column: str, last_field: str, reply, turn: str = "turn", user_turn: str = "human turn") -> dict:
    """What every conversation format does once its turns are parsed into ``messages``.

    Reads the system column when no system turn was given, then shapes the row for the stage:
    text for pre-training, chosen/rejected (via ``reply(column)``) for ranking, the conversation
    (plus an optional kto_tag) otherwise, raising RowError on a row the stage cannot use.
    """
    if system is None and col("system"):
        value = row.get(col("system"))
        if value is not None and not isinstance(value, str):
            raise RowError(col("system"), f"must be a string, got {type(value).__name__}")
        system = value or None
    if not messages:
        raise RowError(column, f"no {turn}s besides the system prompt")
    if attr.data_kind == "text":
        return {"text": "\n".join(m["content"] for m in messages)}
    example = {"messages": messages, "system": system, "tools": json_text_field(row, col("tools"))}
    if attr.ranking:
        if len(messages) % 2 == 0:
            raise RowError(column, f"a preference row's conversation must end with a {user_turn} (the replies are chosen/rejected)")
        example["chosen"] = reply(col("chosen"))
        example["rejected"] = reply(col("rejected"))
        return example
    if len(messages) % 2 != 0:
        raise RowError(column, f"the conversation must end with an assistant {turn}")
    if not messages[-1]["content"].strip():
        raise RowError(last_field, "empty response")
    if col("kto_tag"):
        example["kto_tag"] = bool_field(row, col("kto_tag"))
    return example
