"""Render a conversation with a chat template definition into token ids and a label mask.

A definition (templates/*.yaml, or any ChatTemplateSpec) is plain data:

- ``format_prefix``: text before everything (e.g. the BOS token);
- ``format_system``, ``format_user``, ``format_assistant``: slots with ``{{content}}``;
  ``{{bos_token}}`` / ``{{eos_token}}`` are replaced by the tokenizer's;
- ``system_in_user``: the system text goes inside the first user turn (Llama 2, Mistral);
- ``append_eos``: add the tokenizer's EOS after each assistant turn (when the slot does not end it);
- ``default_system``: used when a conversation has no system message;
- ``stop_words``: extra strings that end generation.

Each turn is encoded piece by piece, so the boundary between prompt and response tokens is exact
and the label mask never cuts a token in two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Template:
    name: str
    format_user: str = "{{content}}"
    format_assistant: str = "{{content}}"
    format_system: str = "{{content}}"
    format_prefix: str = ""
    system_in_user: bool = False
    append_eos: bool = True
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    detect: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_definition(cls, name: str, definition: dict[str, Any]) -> "Template":
        fields = {k: v for k, v in definition.items() if k in cls.__dataclass_fields__ and k != "name"}
        for key in ("stop_words", "detect"):
            if key in fields:
                fields[key] = tuple(fields[key] or ())
        return cls(name=name, **fields)

    def _fill(self, slot: str, content: str, tokenizer) -> str:
        text = slot.replace("{{content}}", content)
        text = text.replace("{{bos_token}}", tokenizer.bos_token or "")
        return text.replace("{{eos_token}}", tokenizer.eos_token or "")

    def _encode(self, tokenizer, text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    def encode_turns(self, tokenizer, messages: list[dict], system: str | None = None) -> list[tuple[list[int], list[int]]]:
        """Return ``[(prompt_ids, response_ids), ...]``, one pair per user/assistant exchange.

        ``messages`` alternate user, assistant (the last may be a user turn for generation, then its
        response ids are empty).
        """
        system = self.default_system if system is None else system
        pairs = []
        for i in range(0, len(messages), 2):
            user = messages[i]["content"]
            prompt = ""
            if i == 0:
                prompt += self._fill(self.format_prefix, "", tokenizer)
                if system and not self.system_in_user:
                    prompt += self._fill(self.format_system, system, tokenizer)
                elif system:
                    user = self._fill(self.format_system, system, tokenizer) + user
            prompt += self._fill(self.format_user, user, tokenizer)
            response_ids: list[int] = []
            if i + 1 < len(messages):
                response_ids = self._encode(tokenizer, self._fill(self.format_assistant, messages[i + 1]["content"], tokenizer))
                if self.append_eos and tokenizer.eos_token_id is not None:
                    response_ids.append(tokenizer.eos_token_id)
            pairs.append((self._encode(tokenizer, prompt), response_ids))
        return pairs

    def encode_supervised(
        self, tokenizer, messages: list[dict], system: str | None, cutoff_len: int, train_on_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels for SFT: every assistant turn trains; prompts are masked with -100.

        Truncation to ``cutoff_len`` drops whole later turns first, then cuts the last kept turn's
        response (never its prompt), so a kept response always has its question.
        """
        input_ids: list[int] = []
        labels: list[int] = []
        for prompt_ids, response_ids in self.encode_turns(tokenizer, messages, system):
            room = cutoff_len - len(input_ids)
            if room <= len(prompt_ids):
                break
            response_ids = response_ids[: room - len(prompt_ids)]
            input_ids += prompt_ids + response_ids
            labels += (prompt_ids if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)) + response_ids
        return input_ids, labels

    def encode_prompt(self, tokenizer, messages: list[dict], system: str | None = None) -> list[int]:
        """Ids for generation: the whole history plus the last user turn, ready for the reply."""
        ids: list[int] = []
        for prompt_ids, response_ids in self.encode_turns(tokenizer, messages, system):
            ids += prompt_ids + response_ids
        return ids

    def stop_token_ids(self, tokenizer) -> list[int]:
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for word in self.stop_words:
            token_id = tokenizer.convert_tokens_to_ids(word)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id not in ids:
                ids.append(token_id)
        return ids
