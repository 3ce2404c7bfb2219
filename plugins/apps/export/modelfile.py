"""An Ollama ``Modelfile`` from a chat template: the template in Go-template syntax, stop words and
the default system prompt, so ``ollama create NAME -f Modelfile`` in the export folder serves the model
with the prompt format it was trained on.

The Go template walks ``.Messages`` (Ollama's multi-turn form): user turns through the template's
user slot (which opens the assistant turn, so generation starts right after the last one),
assistant turns through the assistant slot, tool results through the observation slot, and
``.System`` through the system slot (inside the first user turn for ``system_in_user`` templates).
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _literal(text: str) -> str:
    """Text that Go's text/template prints as it is (only ``{{`` is special)."""
    return text.replace("{{", '{{ "{{" }}')


def _slot(slot: str, tokenizer, content: str) -> str:
    values = {"bos_token": getattr(tokenizer, "bos_token", None) or "", "eos_token": getattr(tokenizer, "eos_token", None) or ""}
    out, pos = [], 0
    for match in _PLACEHOLDER.finditer(slot):
        out.append(_literal(slot[pos : match.start()]))
        name = match.group(1)
        if name == "content":
            out.append(content)
        elif name == "idx":
            out.append("{{ $i }}")
        else:
            out.append(_literal(values.get(name, "")))
        pos = match.end()
    out.append(_literal(slot[pos:]))
    return "".join(out)


def go_template(template, tokenizer) -> str:
    """The Ollama TEMPLATE text for ``template``."""
    t = template
    eos = _literal(getattr(tokenizer, "eos_token", None) or "") if t.append_eos else ""
    parts = [_slot(t.format_prefix, tokenizer, "")] if t.format_prefix else []
    if not t.system_in_user:
        parts.append("{{ if .System }}" + _slot(t.format_system, tokenizer, "{{ .System }}") + "{{ end }}")
    parts.append("{{ $first := true }}")
    parts.append("{{ range $i, $_ := .Messages }}")
    if t.system_in_user:
        user_content = ("{{ if and $first $.System }}" + _slot(t.format_system, tokenizer, "{{ $.System }}") + "{{ end }}{{ .Content }}")
    else:
        user_content = "{{ .Content }}"
    parts.append('{{ if eq .Role "user" }}' + _slot(t.format_user, tokenizer, user_content) + "{{ $first = false }}")
    parts.append('{{ else if eq .Role "assistant" }}' + _slot(t.format_assistant, tokenizer, "{{ .Content }}") + eos)
    observation = t.format_observation or t.format_user
    parts.append('{{ else if eq .Role "tool" }}' + _slot(observation, tokenizer, "{{ .Content }}") + "{{ $first = false }}")
    parts.append("{{ end }}")
    parts.append("{{ end }}")
    return "".join(parts)


def stop_words(template, tokenizer) -> list[str]:
    """The text of every stop token (EOS and single-token stop words) and the other stop words."""
    words: list[str] = []
    for token_id in template.stop_token_ids(tokenizer):
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token and token not in words:
            words.append(token)
    for word in template.stop_words:
        if word not in words:
            words.append(word)
    return words


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ollama_modelfile(template, tokenizer, system: str | None = None, num_ctx: int = 4096) -> str:
    system = system or template.default_system
    lines = ["# Ollama Modelfile written by `tuneforge export` (template: %s)" % template.name,
             "# ollama create my-model -f Modelfile", "", "FROM .", "",
             f'TEMPLATE """{go_template(template, tokenizer)}"""', ""]
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    lines += [f"PARAMETER stop {_quoted(word)}" for word in stop_words(template, tokenizer)]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"
