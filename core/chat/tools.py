"""Tool calls between the OpenAI format and a chat template's own format.

A template writes a function turn with ``format_function`` around ``format_tool_calls`` (or
``format_tool_calls_many``) around calls written with ``format_tool_call`` (its ``{{arguments}}`` JSON, or
each argument written with ``format_tool_argument`` for XML-style formats) and joined by
``tool_call_separator`` (see :meth:`tuneforge.data.template.Template.render_tool_calls`).
:func:`parse_tool_calls` reads a generated reply back through the same slots, so every template that
can render tool calls can also have them parsed; nothing here knows a template by name.
"""

from __future__ import annotations

import json
import re
from typing import Any

_SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_WS = " \t\r\n"


def _around(slot: str, tokenizer=None) -> tuple[str, str]:
    """The literal text before and after ``{{content}}`` in a message slot (bos/eos filled in)."""
    values = {"bos_token": getattr(tokenizer, "bos_token", None) or "", "eos_token": getattr(tokenizer, "eos_token", None) or ""}
    head, _, tail = _SLOT.sub(lambda m: "\0" if m.group(1) == "content" else values.get(m.group(1), ""), slot).partition("\0")
    return head, tail


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _parse_calls(template, text: str) -> list[dict] | None:
    parts = [p for p in re.split(r"(\{\{\s*(?:name|arguments)\s*\}\})", template.format_tool_call) if p]
    calls: list[dict] = []
    pos = 0
    separator = template.tool_call_separator.strip(_WS)
    while True:
        call: dict[str, Any] = {}
        for index, part in enumerate(parts):
            placeholder = _SLOT.fullmatch(part)
            following = next((p for p in parts[index + 1 :] if not _SLOT.fullmatch(p)), "")
            if placeholder is None:
                literal = part.strip(_WS)
                pos = _skip_ws(text, pos)
                if literal and not text.startswith(literal, pos):
                    return None
                pos += len(literal)
            elif placeholder.group(1) == "name":
                pos = _skip_ws(text, pos)
                end = text.find(following, pos) if following else -1
                if end < 0 and following.strip(_WS):
                    end = text.find(following.strip(_WS), pos)
                head = _argument_head(template) if index + 1 < len(parts) and _SLOT.fullmatch(parts[index + 1]) else ""
                if head and 0 <= text.find(head, pos) and (end < 0 or text.find(head, pos) < end):
                    end = text.find(head, pos)  # NAME<arg_key>...: the name ends where the first argument starts
                if end < 0:
                    return None
                call["name"] = text[pos:end].strip(_WS)
                pos = end
            elif template.format_tool_argument is not None:
                parsed = _parse_arguments(template, text, pos, following.strip(_WS))
                if parsed is None:
                    return None
                call["arguments"], pos = parsed
            else:
                pos = _skip_ws(text, pos)
                try:
                    call["arguments"], pos = json.JSONDecoder().raw_decode(text, pos)
                except json.JSONDecodeError:
                    return None
        if not call.get("name") or "arguments" not in call:
            return None
        calls.append(call)
        pos = _skip_ws(text, pos)
        if pos >= len(text):
            return calls
        if separator:
            if not text.startswith(separator, pos):
                return None
            pos += len(separator)
        if len(calls) > 64:
            return None


def _argument_head(template) -> str:
    """The literal text an argument of an XML-style call starts with ("" when none, or no such format)."""
    if template.format_tool_argument is None:
        return ""
    first = [p for p in re.split(r"(\{\{\s*(?:key|value)\s*\}\})", template.format_tool_argument) if p][:1]
    return first[0].strip(_WS) if first and not _SLOT.fullmatch(first[0]) else ""


def _parse_arguments(template, text: str, pos: int, stop: str) -> tuple[dict, int] | None:
    """Arguments written one by one with ``format_tool_argument`` (XML-style calls), up to ``stop``."""
    parts = [p for p in re.split(r"(\{\{\s*(?:key|value)\s*\}\})", template.format_tool_argument) if p]
    separator = template.tool_argument_separator.strip(_WS)
    arguments: dict[str, Any] = {}
    while True:
        pos = _skip_ws(text, pos)
        if (stop and text.startswith(stop, pos)) or pos >= len(text):
            return arguments, pos
        if arguments and separator:
            if not text.startswith(separator, pos):
                return None
            pos = _skip_ws(text, pos + len(separator))
        head = _argument_head(template)
        if head and not text.startswith(head, pos):
            return arguments, pos
        key = None
        for index, part in enumerate(parts):
            placeholder = _SLOT.fullmatch(part)
            following = next((p.strip(_WS) for p in parts[index + 1 :] if not _SLOT.fullmatch(p)), "")
            if placeholder is None:
                literal = part.strip(_WS)
                pos = _skip_ws(text, pos)
                if literal and not text.startswith(literal, pos):
                    return None
                pos += len(literal)
                continue
            if placeholder.group(1) == "value" and getattr(template, "tool_argument_quote", None) is not None:
                read = _read_quoted(text, _skip_ws(text, pos), template.tool_argument_quote)
                if read is None:
                    return None
                arguments[key or ""], pos = read
                continue
            if placeholder.group(1) == "value" and template.tool_argument_json_strings:
                pos = _skip_ws(text, pos)
                try:
                    value, pos = json.JSONDecoder().raw_decode(text, pos)
                except json.JSONDecodeError:
                    return None
                arguments[key or ""] = value
                continue
            ends = [e for e in (text.find(w, pos) for w in (following, separator, stop) if w) if e >= 0]
            end = min(ends) if following == "" and ends else (text.find(following, pos) if following else len(text))
            if end < 0:
                return None
            raw = text[pos:end].strip(_WS)
            pos = end
            if placeholder.group(1) == "key":
                key = raw
            else:
                try:
                    arguments[key or ""] = json.loads(raw)
                except json.JSONDecodeError:
                    arguments[key or ""] = raw


def _read_quoted(text: str, pos: int, quote: str) -> tuple[Any, int] | None:
    """One value in Gemma 4's object notation (strings between ``quote``, ``[a,b]``, ``{key:value}``, bare
    numbers and true/false) from ``pos``: ``(value, end)``, or None when the text is not one."""
    pos = _skip_ws(text, pos)
    if text.startswith(quote, pos):
        end = text.find(quote, pos + len(quote))
        return None if end < 0 else (text[pos + len(quote): end], end + len(quote))
    if text.startswith("[", pos) or text.startswith("{", pos):
        is_map, close = text[pos] == "{", "]" if text[pos] == "[" else "}"
        out: Any = {} if is_map else []
        pos += 1
        while True:
            pos = _skip_ws(text, pos)
            if text.startswith(close, pos):
                return out, pos + 1
            if out and not text.startswith(",", pos):
                return None
            if out:
                pos = _skip_ws(text, pos + 1)
            if is_map:
                if text.startswith(quote, pos):
                    key_end = text.find(quote, pos + len(quote))
                    if key_end < 0:
                        return None
                    key, pos = text[pos + len(quote): key_end], key_end + len(quote)
                else:
                    colon = text.find(":", pos)
                    if colon < 0:
                        return None
                    key, pos = text[pos:colon].strip(_WS), colon
                if not text.startswith(":", pos):
                    return None
                item = _read_quoted(text, pos + 1, quote)
                if item is None:
                    return None
                out[key], pos = item
            else:
                item = _read_quoted(text, pos, quote)
                if item is None:
                    return None
                out.append(item[0])
                pos = item[1]
    match = re.compile(r"[^,\]\}]+").match(text, pos)
    if not match:
        return None
    raw = match.group(0).strip(_WS)
    bare = {"true": True, "false": False, "null": None, "None": None}
    if raw in bare:
        return bare[raw], match.end()
    try:
        return json.loads(raw), match.end()
    except json.JSONDecodeError:
        return raw, match.end()


def _strip(text: str, head: str, tail: str, *, required: bool) -> str | None:
    head, tail = head.strip(_WS), tail.strip(_WS)
    if head:
        if text.startswith(head):
            text = text[len(head):].strip(_WS)
        elif required:
            return None
    if tail:
        if text.endswith(tail):
            text = text[: len(text) - len(tail)].strip(_WS)
        elif required:
            return None
    return text


def parse_tool_calls(template, text: str, tokenizer=None) -> tuple[str, list[dict]] | None:
    """``(content before the calls, [{"name", "arguments"}, ...])`` when ``text`` is a function turn
    in the template's format, else None.

    ``arguments`` is the parsed JSON value (usually a dict). The function slot's own markers (e.g.
    Mistral's ``[TOOL_CALLS]``) are optional, since decoding may drop special tokens; the wrapper
    and the per-call format are required. A reasoning template's thought block is returned as the
    content.
    """
    content = ""
    body = text.strip(_WS)
    close = template.thought_words[1].strip(_WS) if template.reasoning else ""
    apart = (getattr(template, "tool_call_thought_close", None) or "").strip(_WS) if template.reasoning else ""
    if apart and apart in body:  # gpt-oss: the calls follow the thought on their own channel
        close = apart
    if close and close in body:
        cut = body.rindex(close) + len(close)
        content, body = body[:cut], body[cut:].strip(_WS)
    function_slot = template.format_function or template.format_assistant
    body = _strip(body, *_around(function_slot, tokenizer), required=False)
    wrappers = [template.format_tool_calls_many, template.format_tool_calls] if template.format_tool_calls_many else [template.format_tool_calls]
    for wrapper in wrappers:
        inner = _strip(body, *_around(wrapper), required=True)
        if inner:
            calls = _parse_calls(template, inner)
            if calls:
                return content, calls
    return None


def tool_call_heads(template, tokenizer=None) -> list[str] | None:
    """How a function turn of this template can start (whitespace removed), or None when a reply
    cannot be told from a tool call before it ends (an empty head, or a thought block first)."""
    if template.reasoning:
        return None
    function_head = _around(template.format_function or template.format_assistant, tokenizer)[0]
    call_head = re.split(r"\{\{\s*(?:name|arguments)\s*\}\}", template.format_tool_call)[0]
    wrappers = [template.format_tool_calls] + ([template.format_tool_calls_many] if template.format_tool_calls_many else [])
    heads = []
    for wrapper in wrappers:
        head = _around(wrapper)[0] + call_head
        heads += [_squeeze(head), _squeeze(function_head + head)]
    return None if not all(heads) else sorted(set(heads))


def may_be_tool_call(heads: list[str] | None, text: str) -> bool:
    """Whether a reply that begins with ``text`` may still turn out to be a tool call."""
    if heads is None:
        return True
    start = _squeeze(text)
    return any(head.startswith(start) or start.startswith(head) for head in heads)


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


# ----------------------------------------------------------------------------------- OpenAI messages


class MessageError(ValueError):
    """A request's messages cannot be rendered; ``param`` points at the offending field."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
            if kind != "text":
                raise MessageError(f"{where}.content[{i}]", f"content parts of type {kind!r} are not supported by this text-only model; send type 'text'")
            texts.append(part.get("text", "") if isinstance(part, dict) else (part.text or ""))
        return "".join(texts)
    raise MessageError(f"{where}.content", "must be a string or a list of text parts")


def _user_content(content: Any, where: str, image) -> tuple[str, list[str]]:
    """A user message's text, with ``<image>`` where each ``image_url`` part was, and the image files
    (``image(part, where) -> path`` resolves a part; None: images are refused as text-only)."""
    if image is None or not isinstance(content, list):
        return _text(content, where), []
    texts, images = [], []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        if kind == "image_url":
            images.append(image(part if isinstance(part, dict) else part.model_dump(), f"{where}.content[{i}]"))
            texts.append("<image>")
        elif kind == "text":
            texts.append(part.get("text", "") if isinstance(part, dict) else (part.text or ""))
        else:
            raise MessageError(f"{where}.content[{i}]", f"content parts of type {kind!r} are not supported; send 'text' or 'image_url'")
    return "".join(texts), images


def from_openai(messages: list[dict], image=None) -> tuple[list[dict], str | None]:
    """OpenAI chat messages -> ``(template messages, system)``.

    system/developer messages (at the start) become the system prompt; an assistant message with
    ``tool_calls`` becomes a function turn (JSON list of ``{"name", "arguments"}``); consecutive
    tool results become one observation turn (one result: as it is; several: a JSON list).
    Raises :class:`MessageError` naming the message that breaks the user/assistant alternation.

    ``image(part, where) -> file path``: how ``image_url`` content parts of user messages become
    files (the message gets ``<image>`` where the part was and ``images``: the paths, in order); it
    raises :class:`MessageError` for a part it refuses. None: image parts are an error (text-only).
    """
    system_parts: list[str] = []
    out: list[dict] = []
    pending_tools: list[str] = []

    def flush_tools():
        if pending_tools:
            content = pending_tools[0] if len(pending_tools) == 1 else json.dumps(pending_tools, ensure_ascii=False)
            out.append({"role": "observation", "content": content, "_index": tool_index})
            pending_tools.clear()

    tool_index = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if role in ("system", "developer"):
            if out or pending_tools:
                raise MessageError(f"{where}.role", "a system message must come before the conversation")
            system_parts.append(_text(message.get("content"), where))
            continue
        if role == "tool" or role == "function":
            if not pending_tools:
                tool_index = index
            pending_tools.append(_text(message.get("content"), where))
            continue
        flush_tools()
        if role == "user":
            text, images = _user_content(message.get("content"), where, image)
            out.append({"role": "user", "content": text, "_index": index, **({"images": images} if images else {})})
        elif role == "assistant":
            tool_calls = message.get("tool_calls") or []
            if tool_calls:
                calls = []
                for i, call in enumerate(tool_calls):
                    fn = call.get("function") or {}
                    arguments = fn.get("arguments", "{}")
                    try:
                        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
                    except json.JSONDecodeError:
                        raise MessageError(f"{where}.tool_calls[{i}].function.arguments", "is not valid JSON") from None
                    if not fn.get("name"):
                        raise MessageError(f"{where}.tool_calls[{i}].function.name", "is required")
                    calls.append({"name": fn["name"], "arguments": arguments})
                out.append({"role": "function", "content": json.dumps(calls, ensure_ascii=False), "_index": index})
            else:
                out.append({"role": "assistant", "content": _text(message.get("content"), where), "_index": index})
        else:
            raise MessageError(f"{where}.role", f"unknown role {role!r}; use system, user, assistant or tool")
    flush_tools()
    if not out:
        raise MessageError("messages", "needs at least one user message")
    for position, message in enumerate(out):
        expected = ("user", "observation") if position % 2 == 0 else ("assistant", "function")
        if message["role"] not in expected:
            shown = {"observation": "tool", "function": "assistant (tool_calls)"}.get(message["role"], message["role"])
            wanted = "a user (or tool) message" if position % 2 == 0 else "an assistant message"
            raise MessageError(f"messages[{message['_index']}].role", f"expected {wanted} here, got {shown}: turns must alternate")
    if out[-1]["role"] not in ("user", "observation"):
        raise MessageError(f"messages[{out[-1]['_index']}]", "the last message must be from the user (or a tool result)")
    system = "\n".join(system_parts) if system_parts else None
    return [{k: v for k, v in m.items() if k != "_index"} for m in out], system
