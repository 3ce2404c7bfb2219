"""OpenAI chat rows: ``messages`` of ``{role, content}``, with tool calls (LLaMA-Factory's openai format).

- ``system`` (or ``developer``) first: the system prompt;
- ``user`` / ``assistant``: the turns; an assistant message with ``tool_calls`` (or the older
  ``function_call``) becomes a ``function`` turn whose content is the JSON list of
  ``{"name", "arguments"}`` calls (string arguments are parsed, so they are not encoded twice);
- ``tool`` (or the older ``function``) messages are tool results: an ``observation`` turn; several in a
  row are joined into one observation as LLaMA-Factory does;
- content given as a list of parts keeps its text parts;
- ``tools`` (column, default ``tools``) holds the tool definitions;
- ``ranking: true``: ``chosen`` / ``rejected`` are assistant messages (or lists of one, as in OpenAI's
  preference fine-tuning files); a ``kto_tag`` column makes a KTO row.

Roles are configurable with dataset_info.json ``tags`` like sharegpt's.
"""

from __future__ import annotations

import json

from tuneforge import DatasetFormatSpec, hookimpl
from tuneforge.data.example import finish_conversation, order_problem, tag_roles
from tuneforge.errors import RowError

COLUMNS = {"messages": "messages", "system": None, "tools": "tools", "chosen": "chosen", "rejected": "rejected", "kto_tag": None}
TAGS = {
    "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
    "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system",
}
ALIASES = {"system_tag": ("developer",), "observation_tag": ("function", "observation")}
#: How LLaMA-Factory joins consecutive tool results into one observation turn.
TOOL_RESPONSE_JOINER = "\n</tool_response>\n<tool_response>\n"


def _text(content, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif not (isinstance(part, dict) and part.get("type") not in (None, "text")):
                raise RowError(f"{where}[{index}]", "a content part needs a 'text' string")
        return "".join(parts)
    raise RowError(where, f"must be a string or a list of parts, got {type(content).__name__}")


def _calls(message: dict, where: str) -> str | None:
    """The JSON content of a function turn, or None when the message calls no tool."""
    calls = message.get("tool_calls")
    if not calls and isinstance(message.get("function_call"), dict):
        calls = [{"function": message["function_call"]}]
    if not calls:
        return None
    if not isinstance(calls, list):
        raise RowError(f"{where}.tool_calls", f"must be a list, got {type(calls).__name__}")
    out = []
    for index, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RowError(f"{where}.tool_calls[{index}]", "needs a function with a name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise RowError(f"{where}.tool_calls[{index}].function.arguments", f"not valid JSON ({exc.msg})") from None
        out.append({"name": function["name"], "arguments": arguments})
    return json.dumps(out, ensure_ascii=False)


def _reply(row: dict, column: str, role_tag: str, content_tag: str, roles: dict) -> str:
    value = row.get(column)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        if roles.get(value.get(role_tag, TAGS["assistant_tag"])) != "assistant":
            raise RowError(f"{column}.{role_tag}", f"must be an assistant message, got '{value.get(role_tag)}'")
        text = _text(value.get(content_tag), f"{column}.{content_tag}")
    elif value is None:
        raise RowError(column, "missing")
    else:
        raise RowError(column, f"must be an assistant message, got {type(value).__name__}")
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
        raise RowError(column, "must be a non-empty list of messages")
    role_tag, content_tag = attr.tag("role_tag", TAGS["role_tag"]), attr.tag("content_tag", TAGS["content_tag"])
    roles = tag_roles(attr, TAGS, ALIASES)

    system = None
    messages: list[dict] = []
    tool_results: list[str] = []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"must be an object with '{role_tag}' and '{content_tag}', got {type(turn).__name__}")
        role = roles.get(turn.get(role_tag))
        if role is None:
            raise RowError(f"{where}.{role_tag}", f"unknown role {turn.get(role_tag)!r}; expected one of {', '.join(roles)}")
        if role == "system":
            if messages or tool_results:
                raise RowError(where, "a system message may only come first")
            system = _text(turn.get(content_tag), f"{where}.{content_tag}")
            continue
        if role == "observation":
            tool_results.append(_text(turn.get(content_tag), f"{where}.{content_tag}"))
            continue
        if tool_results:
            messages.append({"role": "observation", "content": TOOL_RESPONSE_JOINER.join(tool_results)})
            tool_results = []
        content = _calls(turn, where) if role in ("assistant", "function") else None
        if content is not None:
            role = "function"
        else:
            content = _text(turn.get(content_tag), f"{where}.{content_tag}")
        messages.append({"role": role, "content": content})
        problem = order_problem([m["role"] for m in messages])
        if problem:
            raise RowError(f"{where}.{role_tag}", problem[1])
    if tool_results:
        messages.append({"role": "observation", "content": TOOL_RESPONSE_JOINER.join(tool_results)})
        problem = order_problem([m["role"] for m in messages])
        if problem:
            raise RowError(f"{column}[{len(turns) - 1}].{role_tag}", problem[1])
    return finish_conversation(
        row, attr, col, messages=messages, system=system, column=column,
        last_field=f"{column}[{len(turns) - 1}].{content_tag}",
        reply=lambda name: _reply(row, name, role_tag, content_tag, roles), turn="message", user_turn="user message",
    )


@hookimpl
def tuneforge_dataset_formats():
    return [
        DatasetFormatSpec(
            name="openai",
            description="OpenAI chat messages {role, content} with tool_calls and tool results.",
            convert=convert,
        )
    ]


@hookimpl(trylast=True)
def tuneforge_detect_dataset_format(path, row):
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict) and "role" in messages[0]:
        return "openai"
    return None
