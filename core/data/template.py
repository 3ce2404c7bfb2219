"""Render a conversation with a chat template definition into text, token ids and a label mask.

A definition (``templates/*.yaml``, or any ChatTemplateSpec's ``definition``) is plain data; the keys
are documented in ``docs/templates.md`` and listed in :data:`KEYS`. In short:

- slots: ``format_prefix``, ``format_system``, ``format_user``, ``format_assistant``,
  ``format_function`` (an assistant tool call), ``format_observation`` (a tool result) with
  ``{{content}}``; ``{{bos_token}}`` / ``{{eos_token}}`` become the tokenizer's, ``{{idx}}`` (user
  slot) the exchange number;
- ``system_in_user``: the system text goes inside the first user turn (Llama 2, Mistral, Gemma);
- eos policy: ``append_eos`` (the tokenizer's EOS id follows every response and is trained),
  ``efficient_eos`` (LLaMA-Factory's: EOS is only a training *target* after each trained response,
  and a real token only at the very end), or neither (the slot itself ends the turn);
- ``default_system``, ``stop_words``, ``replace_eos`` (the first stop word becomes the saved
  tokenizer's EOS, see :meth:`Template.apply_to_tokenizer`);
- tools: ``format_tools`` / ``format_tool`` (the tool list appended to the system text),
  ``format_tool_call`` / ``tool_call_separator`` / ``format_tool_calls`` (how a function turn's JSON
  is written);
- thinking: ``reasoning`` with ``thought_words`` (Qwen3-style ``<think>`` blocks, ``enable_thinking``).

Every exchange is rendered to text first, piece by piece (prompt, response), and each piece is
encoded once with ``add_special_tokens=False``; so the boundary between prompt and response tokens is
exact, the label mask never cuts a token in two, and ``decode`` of the pieces gives back the text.
With ``encode_whole`` (LLaVA's turns end with a space the next word absorbs) the whole conversation is
encoded in one call instead, and each token goes with the piece that holds its last character.

Templates are data: nothing here branches on a template's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

IGNORE_INDEX = -100

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_PLACEHOLDER_WHOLE = re.compile(f"({_PLACEHOLDER.pattern})")  # the same, keeping each placeholder as written

#: Placeholders each kind of slot may use.
_SLOT_VARS = {
    "message": {"content", "bos_token", "eos_token"},
    "user": {"content", "bos_token", "eos_token", "idx"},
    "observation": {"content", "bos_token", "eos_token", "idx", "name"},
    "tool_call": {"name", "arguments"},
    "tool": {"tool", "name", "description", "parameters", "parameters_typescript", "parameters_declaration"},
    "tools": {"content", "tool_names"},
    "tool_argument": {"key", "value"},
}

_DEFAULT_TOOLS = (
    "You have access to the following tools:\n{{content}}"
    "Use the following format if using a tool:\n```\n"
    "Action: tool name (one of [{{tool_names}}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n'
)
_DEFAULT_TOOL = "> Tool Name: {{name}}\nTool Description: {{description}}\nTool Args: {{parameters}}\n"


@lru_cache(maxsize=4096)
def _slot_parts(slot: str) -> tuple[str, ...]:
    """``slot`` split at its placeholders: literal text, then per placeholder its text as written and its
    name, then literal text again (a slot is parsed once, then filled by joining)."""
    return tuple(_PLACEHOLDER_WHOLE.split(slot))


@dataclass(frozen=True)
class Template:
    """One chat template. Build it with :meth:`from_definition`; every field is a definition key."""

    name: str
    description: str = ""
    # slots
    format_prefix: str = ""
    format_system: str = "{{content}}"
    format_user: str = "{{content}}"
    format_assistant: str = "{{content}}"
    format_function: str | None = None  # None: format_assistant
    format_observation: str | None = None  # None: format_user
    system_in_user: bool = False
    default_system: str = ""
    # eos policy and stopping
    append_eos: bool = True
    efficient_eos: bool = False
    replace_eos: bool = False
    stop_words: tuple[str, ...] = ()
    # tools offered (appended to the system text) and tool calls made (function turns)
    format_tools: str = _DEFAULT_TOOLS
    format_tool: str = _DEFAULT_TOOL
    tool_separator: str = ""
    tool_json_indent: int | None = None
    tool_wrap_function: bool = False
    system_tools_separator: str = "\n\n"
    #: The tools text comes first, then the separator and the system prompt (Qwen3.5, GLM-4.5).
    tools_before_system: bool = False
    format_tool_call: str = "Action: {{name}}\nAction Input: {{arguments}}"
    tool_call_separator: str = "\n"
    format_tool_calls: str = "{{content}}"
    format_tool_calls_many: str | None = None  # None: format_tool_calls
    parallel_tool_calls: bool = True
    #: XML-style calls (Qwen3.5, GLM-4.5, Seed-OSS, MiniMax-M2): each argument written with this slot
    #: ({{key}}, {{value}}) and joined by tool_argument_separator becomes the call's {{arguments}}.
    format_tool_argument: str | None = None
    tool_argument_separator: str = ""
    #: Argument values that are strings are written as JSON strings (quoted) too, not as they are.
    tool_argument_json_strings: bool = False
    #: Arguments in an object notation whose strings sit between this quote (Gemma 4: ``<|"|>``): lists ``[a,b]``,
    #: objects ``{key:value}``, ``true``/``false``, numbers as they are; also the quote of ``{{parameters_declaration}}``.
    tool_argument_quote: str | None = None
    #: Arguments (and the keys of object values) are written sorted by name, case-insensitively (Jinja's dictsort).
    tool_argument_sorted: bool = False
    #: Reasoning templates whose calls go on another channel than the answer (gpt-oss): what closes a thought
    #: block in front of tool calls instead of thought_words[1]; set, a function turn gets no empty thought block.
    tool_call_thought_close: str | None = None
    # thinking
    reasoning: bool = False
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    #: Reasoning templates: earlier replies keep their thoughts (LLaMA-Factory's preserve_thinking;
    #: the ``preserve_thinking`` config key sets it for a run). False: history replies lose them.
    preserve_thinking: bool = False
    #: Encode the whole conversation in one call and split prompt/response tokens by character offsets
    #: (each token goes with the piece that holds its last character), instead of piece by piece: for
    #: chat formats whose turns end with a space the next word absorbs (LLaVA's ``... ASSISTANT: A USER:``).
    encode_whole: bool = False
    # detection markers (see tuneforge.plugins.templates.builtin)
    detect: tuple[str, ...] = field(default=(), compare=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_definition(cls, name: str, definition: dict[str, Any]) -> "Template":
        """Build from plain data; unknown keys, bad types and unknown placeholders are errors."""
        from ..errors import TuneforgeError, did_you_mean

        known = [f.name for f in fields(cls) if f.name != "name"]
        problems = []
        values: dict[str, Any] = {}
        for key, value in (definition or {}).items():
            if key in ("media", "media_placeholders", "media_first"):  # the template spec's media handler, not rendering
                continue
            if key not in known:
                problems.append(f"unknown key {key!r}{did_you_mean(key, known)}")
                continue
            values[key] = value
        for key in ("stop_words", "detect", "thought_words"):
            if key in values:
                raw = values[key]
                if isinstance(raw, str) or not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) for v in raw):
                    problems.append(f"{key} must be a list of strings")
                    continue
                values[key] = tuple(raw)
        if "thought_words" in values and len(values["thought_words"]) != 2:
            problems.append("thought_words must be two strings: [open, close]")
        for f in fields(cls):
            if f.name not in values or f.name in ("stop_words", "detect", "thought_words"):
                continue
            value = values[f.name]
            expected = {"bool": bool, "str": str}.get(str(f.type))
            if str(f.type) == "str | None":
                expected = (str, type(None))
            elif str(f.type) == "int | None":
                expected = (int, type(None))
            if expected is not None and not isinstance(value, expected):
                problems.append(f"{f.name} must be {str(f.type).replace(' | None', ' or null')}, got {type(value).__name__}")
        if not problems:
            template = cls(name=name, **values)
            problems += template._placeholder_problems()
            if template.efficient_eos and template.append_eos and "append_eos" in values:
                problems.append("append_eos and efficient_eos are two eos policies; choose one")
        if problems:
            raise TuneforgeError(f"chat template {name!r}: " + "; ".join(problems))
        if template.efficient_eos and template.append_eos:
            template = cls(name=name, **{**values, "append_eos": False})
        return template

    def _placeholder_problems(self) -> list[str]:
        kinds = {
            "format_prefix": "message", "format_system": "message", "format_user": "user",
            "format_assistant": "message", "format_function": "message", "format_observation": "observation",
            "format_tools": "tools", "format_tool": "tool", "format_tool_call": "tool_call",
            "format_tool_calls": "message", "format_tool_calls_many": "message",
            "format_tool_argument": "tool_argument",
        }
        out = []
        for key, kind in kinds.items():
            slot = getattr(self, key)
            for var in _PLACEHOLDER.findall(slot or ""):
                if var not in _SLOT_VARS[kind]:
                    allowed = ", ".join("{{%s}}" % v for v in sorted(_SLOT_VARS[kind]))
                    out.append(f"{key}: unknown placeholder {{{{{var}}}}} (allowed: {allowed})")
        return out

    # ------------------------------------------------------------------ text

    @staticmethod
    def _fill(slot: str, values: dict[str, str]) -> str:
        """``slot`` with each ``{{name}}`` in ``values`` replaced (others left as written)."""
        parts = _slot_parts(slot)  # literal, (as written, name, literal) per placeholder
        out = [parts[0]]
        for i in range(1, len(parts), 3):
            written, name, literal = parts[i : i + 3]
            out += (values.get(name, written), literal)
        return "".join(out)

    def _message(self, slot: str, content: str, tokenizer, idx: int = 0, name: str = "") -> str:
        values = {"content": content, "idx": str(idx), "name": name}
        if "_token" in slot:  # transformers' attribute lookup is slow: only when the slot asks
            values["bos_token"] = getattr(tokenizer, "bos_token", None) or ""
            values["eos_token"] = getattr(tokenizer, "eos_token", None) or ""
        return self._fill(slot, values)

    @property
    def empty_thought(self) -> str:
        return self.thought_words[0] + self.thought_words[1]

    def _has_thought(self, content: str) -> bool:
        return self.thought_words[0].strip() in content or self.thought_words[1].strip() in content

    def _remove_thought(self, content: str) -> str:
        """Text after the last closing thought tag, leading newlines dropped (as Qwen3 renders history)."""
        close = self.thought_words[1].strip()
        if close and close in content:
            return content.split(close)[-1].lstrip("\n")
        return content

    def _tool_list(self, tools: Any) -> list[dict]:
        return tool_list(tools)

    def render_tools(self, tools: Any) -> str:
        """The text offering ``tools`` (a JSON string or a list of schemas) to the model."""
        items, names = [], []
        for tool in self._tool_list(tools):
            is_wrapped = tool.get("type") == "function" and isinstance(tool.get("function"), dict)
            fn = tool["function"] if is_wrapped else tool
            shown = (tool if tool.get("type") == "function" else {"type": "function", "function": tool}) if self.tool_wrap_function else fn
            names.append(str(fn.get("name", "")))
            items.append(self._fill(self.format_tool, {
                "tool": json.dumps(shown, ensure_ascii=False, indent=self.tool_json_indent),
                "name": str(fn.get("name", "")),
                "description": str(fn.get("description", "")),
                "parameters": json.dumps(fn.get("parameters", {}), ensure_ascii=False),
                "parameters_typescript": typescript_parameters(fn.get("parameters")),
                "parameters_declaration": declaration_parameters(fn.get("parameters"), self.tool_argument_quote or '"'),
            }))
        return self._fill(self.format_tools, {"content": self.tool_separator.join(items), "tool_names": ", ".join(names)})

    def render_tool_calls(self, content: str) -> str:
        """A function turn's content (JSON: one ``{"name", "arguments"}`` or a list) as the model writes it.

        A leading thought block (reasoning templates) is kept in front of the calls. ``arguments``
        given as a string are written as they are; otherwise they are dumped as JSON.
        """
        thought, content = self._split_call_thought(content)
        calls = function_calls(content)
        if len(calls) > 1 and not self.parallel_tool_calls:
            raise ValueError(f"template {self.name!r} writes one tool call per turn; got {len(calls)}")
        parts = []
        for call in calls:
            arguments = call.get("arguments", call.get("parameters", {}))
            if self.format_tool_argument is not None:
                arguments = self._render_arguments(call["name"], arguments)
            elif not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            parts.append(self._fill(self.format_tool_call, {"name": str(call["name"]), "arguments": arguments}))
        wrap = self.format_tool_calls_many if len(parts) > 1 and self.format_tool_calls_many is not None else self.format_tool_calls
        return thought + self._fill(wrap, {"content": self.tool_call_separator.join(parts)})

    def _split_call_thought(self, content: str) -> tuple[str, str]:
        """A function turn's leading thought block (closed by ``tool_call_thought_close`` when set) and its calls."""
        close = self.thought_words[1].strip()
        if not (self.reasoning and close and close in content):
            return "", content
        cut = content.rindex(close) + len(close)
        rest = content[cut:].lstrip("\n")
        thought = content[: len(content) - len(rest)]
        if self.tool_call_thought_close is not None:
            thought = thought[: thought.rindex(close)] + self.tool_call_thought_close
        return thought, rest

    def _call_name(self, content: str) -> str:
        """The name of a function turn's first call (a tool result slot may name it, as gpt-oss's does)."""
        return str(function_calls(self._split_call_thought(content)[1])[0]["name"])

    def _render_arguments(self, name: str, arguments: Any) -> str:
        """A call's arguments written one by one with ``format_tool_argument`` (XML-style formats)."""
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise ValueError(f"template {self.name!r} writes each argument of a call; the arguments of {name!r} "
                                 f"must be a JSON object, got {arguments[:200]!r}") from None
        if not isinstance(arguments, dict):
            raise ValueError(f"template {self.name!r} writes each argument of a call; the arguments of {name!r} "
                             f"must be an object, got {type(arguments).__name__}")
        items = []
        pairs = sorted(arguments.items(), key=lambda kv: str(kv[0]).lower()) if self.tool_argument_sorted else arguments.items()
        for key, value in pairs:
            if self.tool_argument_quote is not None:
                text = quoted_value(value, self.tool_argument_quote, sort=self.tool_argument_sorted)
            else:
                text = value if isinstance(value, str) and not self.tool_argument_json_strings else json.dumps(value, ensure_ascii=False)
            items.append(self._fill(self.format_tool_argument, {"key": str(key), "value": text}))
        return self.tool_argument_separator.join(items)

    def _system_text(self, system: str | None, tools: Any) -> str:
        system = system or self.default_system
        if tools:
            tools_text = self.render_tools(tools)
            if tools_text and system and self.tools_before_system:
                system = tools_text + self.system_tools_separator + system
            elif tools_text:
                system = system + self.system_tools_separator + tools_text if system else tools_text
        return system

    @staticmethod
    def _split_system(messages: list[dict], system: str | None) -> tuple[list[dict], str | None]:
        """Accept a leading ``{"role": "system"}`` message as the system prompt (when none is given)."""
        if messages and messages[0].get("role") == "system":
            return messages[1:], system if system is not None else messages[0].get("content")
        return messages, system

    def _texts(self, tokenizer, messages, system, tools, enable_thinking: bool, targets: str) -> list[tuple[str, str | None]]:
        """(prompt, response) text per exchange; response None for a trailing prompt.

        ``targets``: "all" (SFT: every response is a target), "last" (only the last response is;
        earlier ones are history) or "none" (generation: every response is history).
        """
        messages, system = self._split_system(list(messages), system)
        for index, message in enumerate(messages):
            role = message.get("role")
            allowed = ("user", "observation") if index % 2 == 0 else ("assistant", "function")
            if role not in allowed:
                raise ValueError(f"messages[{index}]: expected {' or '.join(allowed)}, got {role!r}")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{index}]: content must be a string")
        system_text = self._system_text(system, tools)
        out: list[tuple[str, str | None]] = []
        named = self.format_observation is not None and "name" in _PLACEHOLDER.findall(self.format_observation)
        last_call = None
        for i in range(0, len(messages), 2):
            query = messages[i]
            prompt, content = "", query["content"]
            if i == 0:
                prompt += self._message(self.format_prefix, "", tokenizer)
                if system_text and self.system_in_user:
                    content = self._message(self.format_system, system_text, tokenizer) + content
                elif system_text:
                    prompt += self._message(self.format_system, system_text, tokenizer)
            slot = self.format_user if query["role"] == "user" else (self.format_observation or self.format_user)
            if query["role"] == "observation" and named and last_call is None:
                raise ValueError(f"messages[{i}]: template {self.name!r} names the tool in a tool result; "
                                 "put the function (tool call) turn right before it")
            prompt += self._message(slot, content, tokenizer, idx=i // 2, name=last_call or "")
            if i + 1 >= len(messages):
                if self.reasoning and not enable_thinking:
                    prompt += self.empty_thought
                out.append((prompt, None))
                continue
            reply = messages[i + 1]
            answer = reply["content"]
            lead = ""
            last_call = self._call_name(answer) if named and reply["role"] == "function" else None
            if self.reasoning:
                is_target = targets == "all" or (targets == "last" and i + 2 >= len(messages))
                if (not is_target and not self.preserve_thinking) or (is_target and not enable_thinking):
                    answer = self._remove_thought(answer)
                calls_apart = reply["role"] == "function" and self.tool_call_thought_close is not None
                if is_target and not calls_apart and not self._has_thought(answer):
                    if enable_thinking:
                        lead = self.empty_thought  # trained: the model learns to open (and close) the block
                    else:
                        prompt += self.empty_thought  # given: the model answers straight away
            if reply["role"] == "function":
                response = self._message(self.format_function or self.format_assistant, self.render_tool_calls(answer), tokenizer)
            else:
                response = self._message(self.format_assistant, answer, tokenizer)
            out.append((prompt, lead + response))
        return out

    def render_turns(self, tokenizer, messages: list[dict], system: str | None = None, tools: Any = None, *, enable_thinking: bool = True) -> list[tuple[str, str | None]]:
        """The text of ``(prompt, response)`` per exchange, exactly as :meth:`encode_turns` encodes it.

        The EOS id that ``append_eos`` adds after a response is not part of the text.
        """
        return self._texts(tokenizer, messages, system, tools, enable_thinking, "all")

    def render_prompt(self, tokenizer, messages: list[dict], system: str | None = None, tools: Any = None, *, enable_thinking: bool = True) -> str:
        """The generation prompt as text (what :meth:`encode_prompt` encodes), EOS tokens included."""
        text = ""
        for prompt, response in self._prompt_texts(tokenizer, messages, system, tools, enable_thinking):
            text += prompt
            if response is not None:
                text += response + (tokenizer.eos_token or "" if self.append_eos else "")
        return text

    def _prompt_texts(self, tokenizer, messages, system, tools, enable_thinking):
        texts = self._texts(tokenizer, messages, system, tools, enable_thinking, "none")
        if not texts or texts[-1][1] is not None:
            raise ValueError("a generation prompt needs a conversation that ends with a user or observation turn")
        return texts

    # ------------------------------------------------------------------ ids

    @staticmethod
    def _encode(tokenizer, text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    def _response_ids(self, tokenizer, text: str) -> list[int]:
        ids = self._encode(tokenizer, text)
        if self.append_eos and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids

    def _encode_pieces(self, tokenizer, texts: list[tuple[str, str | None]]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, response ids) per (prompt, response) text, EOS not added: piece by piece, or with
        ``encode_whole`` the concatenated text encoded once and cut at the pieces' character offsets."""
        if not self.encode_whole:
            return [(self._encode(tokenizer, p), [] if r is None else self._encode(tokenizer, r)) for p, r in texts]
        bounds, pos = [], 0  # the end offset of every piece, in order: prompt, response, prompt, ...
        for prompt, response in texts:
            pos += len(prompt)
            bounds.append(pos)
            pos += len(response or "")
            bounds.append(pos)
        text = "".join(p + (r or "") for p, r in texts)
        if not text:
            return [([], []) for _ in texts]
        try:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:  # a slow (Python) tokenizer has no character offsets
            from ..errors import TuneforgeError

            raise TuneforgeError(f"template {self.name!r} sets encode_whole, which needs a fast tokenizer (character "
                                 f"offsets); {type(tokenizer).__name__} has none: use the model's tokenizer.json") from None
        pieces: list[list[int]] = [[] for _ in bounds]
        slot = 0
        for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
            last = max(end - 1, start)
            while slot < len(bounds) - 1 and last >= bounds[slot]:
                slot += 1
            pieces[slot].append(token)
        return [(pieces[2 * i], pieces[2 * i + 1]) for i in range(len(texts))]

    def _with_eos(self, tokenizer, ids: list[int]) -> list[int]:
        if self.append_eos and tokenizer.eos_token_id is not None:
            return ids + [tokenizer.eos_token_id]
        return ids

    def encode_turns(self, tokenizer, messages: list[dict], system: str | None = None, tools: Any = None, *, enable_thinking: bool = True) -> list[tuple[list[int], list[int]]]:
        """Return ``[(prompt_ids, response_ids), ...]``, one pair per exchange (SFT view).

        ``messages`` alternate user/observation and assistant/function; a trailing user turn gives a
        pair with empty response ids. Reasoning templates add an empty thought block to every
        response that has none: in the response (trained) when ``enable_thinking``, else at the end
        of the prompt (not trained), and with ``enable_thinking=False`` existing thoughts are removed.
        """
        texts = self._texts(tokenizer, messages, system, tools, enable_thinking, "all")
        return [(p, [] if text[1] is None else self._with_eos(tokenizer, r))
                for (p, r), text in zip(self._encode_pieces(tokenizer, texts), texts)]

    def encode_oneturn(self, tokenizer, messages: list[dict], system: str | None = None, tools: Any = None, *, enable_thinking: bool = True) -> tuple[list[int], list[int]]:
        """``(prompt_ids, response_ids)`` where only the last response is the target (preference data).

        Earlier responses are history: reasoning templates drop their thoughts, as at inference.
        """
        texts = self._texts(tokenizer, messages, system, tools, enable_thinking, "last")
        if not texts or texts[-1][1] is None:
            raise ValueError("encode_oneturn needs a conversation that ends with an assistant or function turn")
        pieces = self._encode_pieces(tokenizer, texts)
        prompt_ids: list[int] = []
        for prompt, response in pieces[:-1]:
            prompt_ids += prompt + self._with_eos(tokenizer, response)
        prompt_ids += pieces[-1][0]
        return prompt_ids, self._with_eos(tokenizer, pieces[-1][1])

    def encode_prompt(self, tokenizer, messages: list[dict], system: str | None = None, tools: Any = None, *, enable_thinking: bool = True) -> list[int]:
        """Ids for generation: the history plus the last user (or observation) turn, ready for the reply.

        History responses are rendered as at inference (reasoning templates drop their thoughts);
        with ``enable_thinking=False`` a reasoning template ends the prompt with an empty thought block.
        """
        texts = self._prompt_texts(tokenizer, messages, system, tools, enable_thinking)
        ids: list[int] = []
        for (prompt, response), text in zip(self._encode_pieces(tokenizer, texts), texts):
            ids += prompt + ([] if text[1] is None else self._with_eos(tokenizer, response))
        return ids

    def encode_supervised(
        self,
        tokenizer,
        messages: list[dict],
        system: str | None = None,
        cutoff_len: int = 2048,
        train_on_prompt: bool = False,
        *,
        tools: Any = None,
        mask_history: bool = False,
        enable_thinking: bool = True,
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels for SFT.

        Labels: prompt tokens are ``IGNORE_INDEX`` (-100) unless ``train_on_prompt``; every response
        trains, or only the last one with ``mask_history``. EOS: with ``append_eos`` the EOS id ends
        every response (and trains with it); with ``efficient_eos`` (LLaMA-Factory's policy) the EOS
        is not put between turns: the label of the first prompt token after a trained response is
        the EOS id (the model learns to stop there), and one real EOS ends the sequence.
        ``train_on_prompt`` cannot be combined with ``efficient_eos``.

        Truncation to ``cutoff_len`` (one EOS reserved for ``efficient_eos``):

        - Exchanges are taken in order; with ``mask_history`` from the last one backwards, so the
          trained exchange is always kept, and earlier exchanges are kept only whole.
        - Each exchange gets the room left; when it does not fit, the room is split as in
          LLaMA-Factory: a short response (under half the room) is kept whole, else a short prompt is,
          else both are cut in proportion to their lengths.
        - A cut prompt loses its *start* (system text, the beginning of the question), never its end,
          so the assistant header stays right before its response; a cut response loses its end.
        - An exchange whose response would get no token is dropped with everything after it, so a
          prompt is never kept without its response. The exchange that was cut is the last one kept;
          with ``efficient_eos`` the final EOS follows it only if its response was kept whole.

        A conversation whose first exchange cannot keep a single response token gives no trained
        label at all (callers drop such rows).
        """
        self.check_supervised(train_on_prompt)
        turns = self.encode_turns(tokenizer, messages, system, tools, enable_thinking=enable_thinking)
        return self.supervised_from_turns(turns, tokenizer.eos_token_id, cutoff_len, train_on_prompt, mask_history)

    def check_supervised(self, train_on_prompt: bool) -> None:
        """Raise the error :meth:`encode_supervised` gives for settings this template refuses."""
        if train_on_prompt and self.efficient_eos:
            from ..errors import TuneforgeError

            raise TuneforgeError(f"template {self.name!r} uses efficient_eos, which does not support train_on_prompt")

    def encode_turns_many(self, tokenizer, conversations: list[tuple[list[dict], str | None, Any]], *,
                          enable_thinking: bool = True) -> list[list[tuple[list[int], list[int]]]]:
        """:meth:`encode_turns` of many ``(messages, system, tools)`` conversations, every text piece
        of all of them encoded in one batched tokenizer call (a fast tokenizer encodes a batch in Rust,
        in parallel, without Python work per piece). The same ids as one :meth:`encode_turns` per
        conversation: each piece is still encoded on its own, only the calls are batched."""
        rendered = [self._texts(tokenizer, m, s, t, enable_thinking, "all") for m, s, t in conversations]
        if self.encode_whole:  # one call per conversation: its pieces are cut from one encoding, not encoded alone
            return [[(p, [] if text[1] is None else self._with_eos(tokenizer, r))
                     for (p, r), text in zip(self._encode_pieces(tokenizer, texts), texts)] for texts in rendered]
        pieces = [text for texts in rendered for pair in texts for text in pair if text]
        from .batch_encode import encode_texts

        encoded = iter(encode_texts(tokenizer, pieces))
        eos = [tokenizer.eos_token_id] if self.append_eos and tokenizer.eos_token_id is not None else []
        out = []
        for texts in rendered:
            pairs = []
            for prompt, response in texts:
                prompt_ids = next(encoded) if prompt else []
                if response is None:
                    pairs.append((prompt_ids, []))
                else:
                    pairs.append((prompt_ids, (next(encoded) if response else []) + eos))
            out.append(pairs)
        return out

    def uncut_segments(self, turns: list[tuple[list[int], list[int]]], train_on_prompt: bool = False,
                       mask_history: bool = False) -> list[tuple[list[int], bool]] | None:
        """:meth:`supervised_from_turns` with no cutoff, as pieces: ``(ids, trained)`` in order, the
        labels being the ids where trained and IGNORE_INDEX elsewhere. Lets a batch build its label
        arrays without a Python list per row. None when labels are not that simple (efficient_eos puts
        EOS labels on prompt tokens): use :meth:`supervised_from_turns`."""
        if self.efficient_eos:
            return None
        turns = [(p, r) for p, r in turns if r]
        last = len(turns) - 1
        out: list[tuple[list[int], bool]] = []
        for index, (prompt_ids, response_ids) in enumerate(turns):
            out.append((prompt_ids, train_on_prompt))
            out.append((response_ids, not mask_history or index == last))
        return out

    def supervised_from_turns(self, turns: list[tuple[list[int], list[int]]], eos_id: int | None, cutoff_len: int,
                              train_on_prompt: bool = False, mask_history: bool = False) -> tuple[list[int], list[int]]:
        """Ids and labels from :meth:`encode_turns`' pairs: truncation, masks and EOS as documented
        in :meth:`encode_supervised` (which is this after encoding)."""
        turns = [(p, r) for p, r in turns if r]
        final_eos = self.efficient_eos and eos_id is not None
        budget = cutoff_len - (1 if final_eos else 0)
        order = list(range(len(turns)))[::-1] if mask_history else list(range(len(turns)))
        kept: dict[int, tuple[list[int], list[int], bool]] = {}
        used = 0
        for rank, index in enumerate(order):
            prompt_ids, response_ids = turns[index]
            room = budget - used
            if room <= 0:
                break
            if mask_history and rank > 0:
                if len(prompt_ids) + len(response_ids) > room:
                    break
                source_len, target_len = len(prompt_ids), len(response_ids)
            else:
                source_len, target_len = split_budget(len(prompt_ids), len(response_ids), room)
                if target_len == 0:
                    break
            whole = target_len == len(response_ids)
            kept[index] = (prompt_ids[len(prompt_ids) - source_len :], response_ids[:target_len], whole)
            used += source_len + target_len
            if source_len < len(prompt_ids) or not whole:
                break
        input_ids: list[int] = []
        labels: list[int] = []
        last = len(turns) - 1
        previous_trained = False
        for index in sorted(kept):
            prompt_ids, response_ids, whole = kept[index]
            prompt_labels = list(prompt_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
            if self.efficient_eos and previous_trained and prompt_labels:
                prompt_labels[0] = eos_id
            trained = not mask_history or index == last
            input_ids += prompt_ids + response_ids
            labels += prompt_labels + (list(response_ids) if trained else [IGNORE_INDEX] * len(response_ids))
            previous_trained = trained and whole
        if final_eos and kept and previous_trained:
            input_ids.append(eos_id)
            labels.append(eos_id)
        return input_ids, labels

    def stop_token_ids(self, tokenizer) -> list[int]:
        """EOS plus every stop word that is a single token of this tokenizer."""
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for word in self.stop_words:
            token_id = _single_token_id(tokenizer, word)
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        return ids

    # ------------------------------------------------------------------ jinja

    def to_jinja(self) -> str:
        """A Hugging Face chat template (Jinja) that renders like :meth:`render_prompt`.

        Understands ``system``/``user``/``assistant`` messages, Hugging Face tool calls
        (``assistant`` with ``tool_calls``, results as ``tool`` messages; ``observation`` works too), the
        ``tools`` argument, and ``enable_thinking`` for reasoning templates. ``add_generation_prompt``
        adds nothing of its own (our user slot already opens the assistant turn), except the empty
        thought block when ``enable_thinking`` is false. A ``function`` message is written through
        the function slot as it is (Jinja cannot parse its JSON).
        """
        from .template_jinja import template_to_jinja

        return template_to_jinja(self)

    def apply_to_tokenizer(self, tokenizer) -> None:
        """Write :meth:`to_jinja` into ``tokenizer.chat_template`` (and, for ``replace_eos`` templates,
        make the first stop word the tokenizer's EOS when it is already one token of the vocabulary),
        so a saved tokenizer renders at inference exactly what training rendered."""
        tokenizer.chat_template = self.to_jinja()
        if self.replace_eos and self.stop_words:
            word = self.stop_words[0]
            if tokenizer.eos_token != word and _single_token_id(tokenizer, word) is not None:
                tokenizer.eos_token = word


_TS_PRIMITIVES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean"}


def _typescript_type(spec: Any) -> str:
    """One JSON schema as a TypeScript-like type, the way gpt-oss's harmony format writes tool parameters."""
    if not isinstance(spec, dict):
        return "any"
    kind = spec.get("type")
    nullable = " | null" if spec.get("nullable") else ""
    if kind == "array":
        items = spec.get("items")
        if not items:
            return "any[]" + nullable
        if isinstance(items, dict) and items.get("type") in _TS_PRIMITIVES:
            return _TS_PRIMITIVES[items["type"]] + "[]" + nullable
        inner = _typescript_type(items)
        return ("any[]" if inner == "object | object" or len(inner) > 50 else inner + "[]") + nullable
    if isinstance(kind, list) and kind:
        return " | ".join(str(k) for k in kind)
    if spec.get("oneOf"):
        variants = spec["oneOf"]
        if len(variants) > 1 and any(isinstance(v, dict) and v.get("type") == "object" for v in variants):
            return "any"
        return " | ".join(_typescript_type(v) for v in variants)
    if kind == "string":
        if spec.get("enum"):
            return '"' + '" | "'.join(str(v) for v in spec["enum"]) + '"'
        return "string" + nullable
    if kind in ("number", "integer", "boolean"):
        return _TS_PRIMITIVES[kind]
    if kind == "object":
        properties = spec.get("properties")
        if not properties:
            return "object"
        required = spec.get("required") or []
        return "{\n" + ", ".join(f"{k}{'' if k in required else '?'}: {_typescript_type(v)}" for k, v in properties.items()) + "}"
    return "any"


def typescript_parameters(parameters: Any) -> str:
    """A tool's parameters as harmony's function type: ``(_: {\n// description\nname?: type,\n}) => any``, or
    ``() => any`` without parameters (the ``{{parameters_typescript}}`` placeholder of ``format_tool``)."""
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not properties or not isinstance(properties, dict):
        return "() => any"
    required = parameters.get("required") or []
    lines = []
    for name, spec in properties.items():
        spec = spec if isinstance(spec, dict) else {}
        line = f"// {spec['description']}\n" if spec.get("description") else ""
        line += f"{name}{'' if name in required else '?'}: {_typescript_type(spec)}"
        if "default" in spec:
            if spec.get("enum"):
                line += f", // default: {spec['default']}"
            elif spec.get("oneOf"):
                line += f"// default: {spec['default']}"
            else:
                line += ", // default: " + json.dumps(spec["default"], ensure_ascii=False)
        lines.append(line + ",\n")
    return "(_: {\n" + "".join(lines) + "}) => any"


def quoted_value(value: Any, quote: str, *, sort: bool = True, quote_keys: bool = False) -> str:
    """A value in Gemma 4's object notation: strings between ``quote``, ``[a,b]``, ``{key:value}`` (keys sorted
    case-insensitively when ``sort``; between quotes when ``quote_keys``), ``true``/``false``, anything else as it is."""
    if isinstance(value, str):
        return quote + value + quote
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        pairs = sorted(value.items(), key=lambda kv: str(kv[0]).lower()) if sort else value.items()
        return "{" + ",".join((quote + str(k) + quote if quote_keys else str(k)) + ":" + quoted_value(v, quote, sort=sort, quote_keys=quote_keys)
                              for k, v in pairs) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(quoted_value(v, quote, sort=sort, quote_keys=quote_keys) for v in value) + "]"
    return str(value)


_DECLARATION_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")


def _sorted_items(mapping: dict) -> list:
    return sorted(mapping.items(), key=lambda kv: str(kv[0]).lower())


def _declaration_properties(properties: dict, quote: str, skip_standard: bool = False) -> str:
    """Each property of a JSON schema as Gemma 4's declaration writes it (sorted by name)."""
    out = []
    for key, spec in _sorted_items(properties):
        if skip_standard and key in _DECLARATION_STANDARD_KEYS:
            continue
        spec = spec if isinstance(spec, dict) else {}
        kind = str(spec["type"]).upper() if "type" in spec else ""
        parts = []
        if spec.get("description"):
            parts.append(f"description:{quote}{spec['description']}{quote}")
        if kind == "STRING" and spec.get("enum"):
            parts.append("enum:" + quoted_value(spec["enum"], quote, quote_keys=True))
        if kind == "ARRAY" and isinstance(spec.get("items"), dict) and spec["items"]:
            items = []
            for item_key, item_value in _sorted_items(spec["items"]):
                if item_value is None:
                    continue
                if item_key == "properties":
                    inner = _declaration_properties(item_value, quote) if isinstance(item_value, dict) else ""
                    items.append("properties:{" + inner + "}")
                elif item_key == "required":
                    items.append("required:[" + ",".join(f"{quote}{r}{quote}" for r in item_value) + "]")
                elif item_key == "type":
                    shown = item_value.upper() if isinstance(item_value, str) else [str(t).upper() for t in item_value]
                    items.append("type:" + quoted_value(shown, quote, quote_keys=True))
                else:
                    items.append(f"{item_key}:" + quoted_value(item_value, quote, quote_keys=True))
            parts.append("items:{" + ",".join(items) + "}")
        if spec.get("nullable"):
            parts.append("nullable:true")
        if kind == "OBJECT":
            if isinstance(spec.get("properties"), dict):
                parts.append("properties:{" + _declaration_properties(spec["properties"], quote) + "}")
            else:
                parts.append("properties:{" + _declaration_properties(spec, quote, skip_standard=True) + "}")
            if spec.get("required"):
                parts.append("required:[" + ",".join(f"{quote}{r}{quote}" for r in spec["required"]) + "]")
        parts.append(f"type:{quote}{kind}{quote}")
        out.append(f"{key}:{{" + ",".join(parts) + "}")
    return ",".join(out)


def declaration_parameters(parameters: Any, quote: str = '"') -> str:
    """A tool's parameters as Gemma 4's declaration writes them, with the comma in front:
    ``,parameters:{properties:{a:{description:<|"|>...<|"|>,type:<|"|>STRING<|"|>}},required:[<|"|>a<|"|>],type:<|"|>OBJECT<|"|>}``
    (the ``{{parameters_declaration}}`` placeholder of ``format_tool``); "" without parameters."""
    if not parameters or not isinstance(parameters, dict):
        return ""
    text = ",parameters:{"
    if parameters.get("properties") and isinstance(parameters["properties"], dict):
        text += "properties:{" + _declaration_properties(parameters["properties"], quote) + "},"
    if parameters.get("required"):
        text += "required:[" + ",".join(f"{quote}{r}{quote}" for r in parameters["required"]) + "],"
    if parameters.get("type"):
        text += f"type:{quote}{str(parameters['type']).upper()}{quote}}}"
    return text


def split_budget(source_len: int, target_len: int, room: int) -> tuple[int, int]:
    """How many prompt and response tokens of one exchange fit in ``room`` (LLaMA-Factory's rule)."""
    if target_len * 2 < room:
        max_target = room
    elif source_len * 2 < room:
        max_target = room - source_len
    else:
        max_target = int(room * (target_len / max(source_len + target_len, 1)))
    new_target = min(max_target, target_len)
    new_source = min(max(room - new_target, 0), source_len)
    return new_source, new_target


def _single_token_id(tokenizer, word: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(word)
    if not isinstance(token_id, int) or token_id < 0:
        return None
    if getattr(tokenizer, "unk_token_id", None) is not None and token_id == tokenizer.unk_token_id and word != tokenizer.unk_token:
        return None
    return token_id


#: The keys that make up a tool format: how tools are offered and how calls are written. ``tool_format:
#: NAME`` takes these from template NAME's definition (LLaMA-Factory's tool_format values are template
#: names: default, glm4, llama3, mistral, qwen, ...), keeping the rest of the selected template.
TOOL_KEYS = (
    "format_tools", "format_tool", "tool_separator", "tool_json_indent", "tool_wrap_function", "system_tools_separator",
    "tools_before_system",
    "format_tool_call", "tool_call_separator", "format_tool_calls", "format_tool_calls_many", "parallel_tool_calls",
    "format_tool_argument", "tool_argument_separator", "tool_argument_json_strings", "tool_call_thought_close",
    "tool_argument_quote", "tool_argument_sorted",
)


def with_tool_format(definition: dict, tool_definition: dict) -> dict:
    """``definition`` with its tool format replaced by ``tool_definition``'s (missing keys: the defaults)."""
    out = {k: v for k, v in definition.items() if k not in TOOL_KEYS}
    out.update({k: v for k, v in tool_definition.items() if k in TOOL_KEYS})
    return out


def tool_format_template(manager, name: str) -> str:
    """The template whose tool format ``tool_format: name`` selects: the template of that name, else the one
    whose spec lists ``name`` in its ``tool_format_names`` (LLaMA-Factory's ``ling`` -> bailing_v2)."""
    names = set(manager.names("template"))
    if name in names:
        return name
    for entry in manager.entries("template"):
        if name in (getattr(entry.spec, "tool_format_names", None) or ()):
            return entry.name
    return name


#: Every key a template definition may use (the Template fields but ``name``).
KEYS = tuple(f.name for f in fields(Template) if f.name != "name")


def tool_list(tools: Any) -> list[dict]:
    """A row's ``tools`` (a JSON string, one schema or a list of them) as a list of tool schemas."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools is not valid JSON ({exc}): {tools[:200]!r}") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError("tools must be a JSON list of tool schemas (objects)")
    return tools


def function_calls(content: str) -> list[dict]:
    """A function turn's text (one JSON call or a list of them) as the list of calls, each with a name."""
    try:
        calls = json.loads(content)
    except json.JSONDecodeError:
        raise ValueError(f"a function turn must be JSON {{\"name\": ..., \"arguments\": ...}} (or a list), got {content[:200]!r}") from None
    calls = calls if isinstance(calls, list) else [calls]
    if not calls or not all(isinstance(c, dict) and "name" in c for c in calls):
        raise ValueError(f"a function turn must name each call: {content[:200]!r}")
    return calls
