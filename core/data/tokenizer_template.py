"""``template: auto``: train and chat with the tokenizer's own Jinja chat template.

Almost every current model ships its chat template in ``tokenizer_config.json`` (or
``chat_template.jinja``). :class:`TokenizerTemplate` renders conversations with it through
``tokenizer.apply_chat_template`` and finds which characters the model wrote, so the label mask is
exact without a hand-written definition. It is a :class:`~tuneforge.data.template.Template` whose
text pieces come from the Jinja template instead of slots; truncation, EOS handling, ``mask_history``
and encoding are the same code.

How the reply spans are found, per conversation:

1. **Generation markers.** A template with ``{% generation %}`` blocks says itself which text is the
   assistant's: the full conversation is rendered once and each block is one trained response; the
   text between blocks is prompt. Text after the last block (the newline after an end-of-turn token)
   ends the row untrained and is left out of it.
2. **Turn by turn.** Otherwise the conversation is rendered cut after each user turn (with the
   generation prompt) and after each reply: ``prompt_k`` is what the cut at user ``k`` adds to the
   rendering through reply ``k-1``, and ``reply_k`` what the reply adds to it. This needs the
   *prefix property*: each shorter rendering is the start of the longer one.
3. **Not a prefix.** Templates that rewrite earlier turns (Qwen3 and DeepSeek-R1 drop the reasoning
   of past replies) break the prefix property. Such a row is trained the way the model's own
   inference sees it: the whole history rendered as the template renders history, and only the
   **last** reply trained (earlier replies are context, like ``mask_history``).
   :meth:`TokenizerTemplate.history_rewritten` says when this happens; ``tuneforge data`` counts the
   rows and ``tuneforge check`` probes local models. A reply whose rendering does not even start with
   the template's generation prompt cannot be masked exactly and is an error, never a guess.

Tools and the system prompt go through the template's own variables: the system prompt as a leading
``system`` message, ``tools`` as the ``tools`` argument (bare function schemas are wrapped as
``{"type": "function", "function": ...}``), tool calls as ``tool_calls`` on an assistant message,
tool results as ``tool`` messages, and ``enable_thinking`` as a template variable.

Chat renders the generation prompt with the same call (``add_generation_prompt=True``), and the
saved tokenizer keeps its template unchanged, so training, chat and export render the same text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .template import Template, function_calls, tool_list

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE_USER, _PROBE_REPLY = "tuneforge-probe-question", "tuneforge-probe-answer"


def chat_template_source(tokenizer) -> str | None:
    """The tokenizer's default Jinja chat template, or None when it has none."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # named templates: {"default": ..., "tool_use": ...}
        source = source.get("default")
    return source if isinstance(source, str) and source.strip() else None


class RenderError(ValueError):
    """The tokenizer's template cannot give an exact prompt/reply split for this conversation."""


@dataclass(frozen=True)
class TokenizerTemplate(Template):
    """A Template whose text comes from the tokenizer's own Jinja chat template (``template: auto``)."""

    source: str = ""
    append_eos: bool = False

    @classmethod
    def from_tokenizer(cls, tokenizer, name: str = "auto") -> "TokenizerTemplate":
        from ..errors import TuneforgeError

        source = chat_template_source(tokenizer)
        if source is None:
            raise TuneforgeError(
                f"template: {name} uses the tokenizer's own chat template, but this tokenizer has none "
                "(no chat_template in tokenizer_config.json or chat_template.jinja); set template: to a built-in name"
            )
        template = cls(name=name, description="the tokenizer's own Jinja chat template", source=source)
        stops = template._probe_stop_words(tokenizer)
        return cls(name=name, description=template.description, source=source, stop_words=tuple(stops),
                   **template._probe_tool_format(tokenizer))

    @property
    def has_generation_markers(self) -> bool:
        return bool(_GENERATION.search(self.source))

    @property
    def how(self) -> str:
        """One line for `data` / `check`: how reply spans are found."""
        if self.has_generation_markers:
            return "the tokenizer's own chat template; replies from its {% generation %} markers"
        return "the tokenizer's own chat template; replies found by rendering turn by turn"

    # ------------------------------------------------------------------ conversion

    @staticmethod
    def _tools(tools: Any) -> list[dict] | None:
        if not tools:
            return None
        tools = tool_list(tools)
        return [t if t.get("type") == "function" and isinstance(t.get("function"), dict) else {"type": "function", "function": t}
                for t in tools] or None

    @staticmethod
    def _tool_calls(content: str) -> list[dict]:
        calls = function_calls(content)
        out = []
        for call in calls:
            arguments = call.get("arguments", call.get("parameters", {}))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            out.append({"type": "function", "function": {"name": str(call["name"]), "arguments": arguments}})
        return out

    def _hf_messages(self, messages: list[dict], system: str | None) -> list[dict]:
        """Our turns (user/assistant/observation/function) as Hugging Face chat messages."""
        messages, system = self._split_system(list(messages), system)
        out = [{"role": "system", "content": system}] if system else []
        for index, message in enumerate(messages):
            role = message.get("role")
            allowed = ("user", "observation") if index % 2 == 0 else ("assistant", "function")
            if role not in allowed:
                raise ValueError(f"messages[{index}]: expected {' or '.join(allowed)}, got {role!r}")
            content = message.get("content")
            if not isinstance(content, str):
                raise ValueError(f"messages[{index}]: content must be a string")
            if role == "function":
                out.append({"role": "assistant", "content": "", "tool_calls": self._tool_calls(content)})
            elif role == "observation":
                out.append({"role": "tool", "content": content})
            else:
                out.append({"role": role, "content": content})
        return out

    def _render(self, tokenizer, hf_messages: list[dict], tools, enable_thinking: bool, generation_prompt: bool) -> str:
        if not hf_messages:
            return ""
        extra = {"preserve_thinking": True} if self.preserve_thinking else {}
        try:
            return tokenizer.apply_chat_template(
                hf_messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt,
                chat_template=self.source, enable_thinking=enable_thinking, **extra,
            )
        except Exception as exc:  # a template's raise_exception, or a Jinja error inside it
            raise RenderError(f"the tokenizer's chat template cannot render this conversation: {exc}") from None

    def _render_marked(self, tokenizer, hf_messages: list[dict], tools, enable_thinking: bool) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        kwargs = {**tokenizer.special_tokens_map, "enable_thinking": enable_thinking}
        if self.preserve_thinking:
            kwargs["preserve_thinking"] = True
        try:
            rendered, spans = render_jinja_template(
                conversations=[hf_messages], tools=tools, chat_template=self.source,
                return_assistant_tokens_mask=True, add_generation_prompt=False, **kwargs,
            )
        except Exception as exc:
            raise RenderError(f"the tokenizer's chat template cannot render this conversation: {exc}") from None
        return rendered[0], [tuple(s) for s in spans[0]]

    # ------------------------------------------------------------------ pieces

    def _turn_renders(self, tokenizer, hf: list[dict], tools, enable_thinking: bool, lead: int, *, last_only: bool = False):
        """[(prompt render, full render)] per exchange: the conversation cut after each query and reply."""
        out = []
        assistant_positions = [i for i in range(lead, len(hf)) if (i - lead) % 2 == 1]
        for position in assistant_positions[-1:] if last_only else assistant_positions:
            prompt = self._render(tokenizer, hf[:position], tools, enable_thinking, True)
            full = self._render(tokenizer, hf[: position + 1], tools, enable_thinking, False)
            out.append((prompt, full))
        return out

    def _prefix_pieces(self, renders) -> list[tuple[str, str]] | None:
        pieces, done = [], ""
        for prompt, full in renders:
            if not prompt.startswith(done) or not full.startswith(prompt):
                return None
            pieces.append((prompt[len(done):], full[len(prompt):]))
            done = full
        return pieces

    def history_rewritten(self, tokenizer, messages: list[dict], system: str | None = None, tools: Any = None,
                          *, enable_thinking: bool = True) -> bool:
        """True when turn-by-turn rendering of this conversation is not a prefix of the full rendering
        (the template rewrites earlier turns), so only its last reply is trained."""
        if self.has_generation_markers:
            return False
        hf = self._hf_messages(messages, system)
        lead = 1 if hf and hf[0]["role"] == "system" else 0
        if len(hf) - lead < 2:
            return False
        return self._prefix_pieces(self._turn_renders(tokenizer, hf, self._tools(tools), enable_thinking, lead)) is None

    def _texts(self, tokenizer, messages, system, tools, enable_thinking: bool, targets: str) -> list[tuple[str, str | None]]:
        hf = self._hf_messages(messages, system)
        tool_list = self._tools(tools)
        lead = 1 if hf and hf[0]["role"] == "system" else 0
        turns = hf[lead:]
        if not turns:
            return []
        if targets == "none" or turns[-1]["role"] in ("user", "tool"):
            if targets != "none" and len(turns) > 1:
                # a trailing query after replies: the replies as pieces, the query as a prompt
                done = self._texts(tokenizer, messages[:-1], system, tools, enable_thinking, targets)
                full = self._render(tokenizer, hf, tool_list, enable_thinking, True)
                so_far = "".join(p + (r or "") for p, r in done)
                if not full.startswith(so_far):
                    raise RenderError("the tokenizer's chat template renders the history differently once a new query follows")
                return done + [(full[len(so_far):], None)]
            return [(self._render(tokenizer, hf, tool_list, enable_thinking, True), None)]
        if self.has_generation_markers:
            text, spans = self._render_marked(tokenizer, hf, tool_list, enable_thinking)
            replies = sum(1 for m in turns if m["role"] == "assistant")
            if len(spans) != replies:
                raise RenderError(f"the tokenizer's chat template marks {len(spans)} {{% generation %}} block(s) for {replies} repl(ies)")
            pieces, pos = [], 0
            for start, end in spans:
                pieces.append((text[pos:start], text[start:end]))
                pos = end
            if targets == "last" and len(pieces) > 1:
                return [("".join(p + r for p, r in pieces[:-1]) + pieces[-1][0], pieces[-1][1])]
            return pieces
        renders = self._turn_renders(tokenizer, hf, tool_list, enable_thinking, lead, last_only=targets != "all")
        pieces = self._prefix_pieces(renders) if targets == "all" else None
        if pieces is not None:
            return pieces
        # The history as the template renders it before the last reply, and that reply: exactly what
        # the model sees and writes at inference.
        prompt, full = renders[-1]
        if not full.startswith(prompt):
            raise RenderError(
                "the tokenizer's chat template renders the reply in a way that does not start with its own "
                "generation prompt, so the reply tokens cannot be told apart exactly; use a built-in template "
                f"(end of prompt: {prompt[-60:]!r}, rendered reply starts: {full[len(prompt) - 20 if len(prompt) >= 20 else 0:][:60]!r})"
            )
        return [(prompt, full[len(prompt):])]

    # ------------------------------------------------------------------ the rest of the Template API

    def render_tool_calls(self, content: str) -> str:
        """A function turn as text, for predictions' labels: the JSON calls as written."""
        return json.dumps([c["function"] for c in self._tool_calls(content)], ensure_ascii=False)

    def _probe_stop_words(self, tokenizer) -> list[str]:
        """Special tokens that close a reply (e.g. ``<|im_end|>``), found by rendering a probe exchange."""
        hf = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}]
        try:
            full = self._render(tokenizer, hf, None, True, False)
        except RenderError:
            return []
        if _PROBE_REPLY not in full:
            return []
        tail = full[full.rindex(_PROBE_REPLY) + len(_PROBE_REPLY):]
        specials = sorted((t for t in getattr(tokenizer, "all_special_tokens", []) + list(getattr(tokenizer, "added_tokens_encoder", {}))
                           if t and t in tail), key=tail.index)
        return list(dict.fromkeys(specials))[:1]

    def _probe_tool_format(self, tokenizer) -> dict:
        """The template's tool-call format as slots, found by rendering one probe call, so a reply the
        model generates in it can be parsed back (chat and the API). Unknown: calls are never parsed."""
        never = {"format_tool_calls": "\0{{content}}\0", "format_tool_call": "\0{{name}}\0{{arguments}}"}
        tools = [{"type": "function", "function": {"name": "tfprobe", "description": "probe",
                                                   "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]
        ask = [{"role": "user", "content": _PROBE_USER}]
        call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "tfprobe", "arguments": {"x": 7}}}]}
        try:
            prompt = self._render(tokenizer, ask, tools, True, True)
            full = self._render(tokenizer, ask + [call], tools, True, False)
            plain = self._render(tokenizer, ask + [{"role": "assistant", "content": _PROBE_REPLY}], None, True, False)
            plain_prompt = self._render(tokenizer, ask, None, True, True)
        except RenderError:
            return never
        if not full.startswith(prompt) or not plain.startswith(plain_prompt) or _PROBE_REPLY not in plain:
            return never
        reply = full[len(prompt):]
        end = plain[plain.rindex(_PROBE_REPLY) + len(_PROBE_REPLY):]  # what ends any reply (e.g. <|im_end|>\n)
        at_name = reply.find("tfprobe")
        for arguments in ('{"x": 7}', '{"x":7}', "{'x': 7}"):
            at_args = reply.find(arguments, at_name)
            if at_name >= 0 and at_args > at_name:
                break
        else:
            return never
        head, between, rest = reply[:at_name], reply[at_name + len("tfprobe"):at_args], reply[at_args + len(arguments):]
        if end and rest.endswith(end):
            rest = rest[: len(rest) - len(end)]
        if "{{" in head + between + rest:
            return never
        out = {"format_function": "{{content}}" + end, "format_tool_call": "{{name}}" + between + "{{arguments}}",
               "tool_call_separator": "\n"}
        if "</think>" in head:  # the template opens every reply with a (here empty) thought block
            head = head[head.rindex("</think>") + len("</think>"):].lstrip("\n")
            out["reasoning"] = True
        out["format_tool_calls"] = head + "{{content}}" + rest
        return out

    def to_jinja(self) -> str:
        return self.source

    def apply_to_tokenizer(self, tokenizer) -> None:
        """The tokenizer keeps its own template: it is the one training rendered with."""
        tokenizer.chat_template = self.source
