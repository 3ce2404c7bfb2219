"""Checks of the config against a local model folder's own files, read as JSON/text (no transformers).

Two mistakes used to be accepted silently and train a model that is quietly wrong:

- ``template`` of another family than the tokenizer's own chat template (a Llama 3 model trained in
  Qwen's format learns a format its users will not prompt it with). Policy, documented in
  docs/config.md: a **warning** that names the family the tokenizer's template belongs to and shows its
  start, not an error: training an instruct model in a new format is legitimate (the saved tokenizer
  then carries the trained template), only doing it unknowingly is the mistake.
- ``cutoff_len`` beyond the model's context (``max_position_embeddings``): a **warning** above it, an
  **error** at more than 4 times it (almost surely a typo, and positions past the context are untrained).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from ..errors import Problem

#: cutoff_len above this many times the model's context is an error, not a warning.
CONTEXT_ERROR_FACTOR = 4
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def _local_model(config) -> Path | None:
    path = config.get("model_name_or_path")
    if not path or not isinstance(path, str):
        return None
    folder = Path(path).expanduser()
    return folder if (folder / "config.json").is_file() else None


def model_context(folder: Path) -> int | None:
    """The model's context length from config.json (a text_config's, for composite models)."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (data, data.get("text_config") or {}, data.get("llm_config") or {}):
        for key in _CONTEXT_KEYS:
            value = section.get(key) if isinstance(section, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def tokenizer_chat_template(folder: Path) -> str | None:
    """The tokenizer's own Jinja chat template: chat_template.jinja, else tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    try:
        source = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    return source if isinstance(source, str) and source.strip() else None


def _excerpt(source: str, limit: int = 120) -> str:
    flat = " ".join(source.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def model_file_checks(config, manager) -> tuple[list[Problem], list[str]]:
    """(problems, warnings) of ``template`` and ``cutoff_len`` against the local model folder."""
    folder = _local_model(config)
    if folder is None:
        return [], []
    problems: list[Problem] = []
    warnings: list[str] = []
    context = model_context(folder)
    cutoff = config.get("cutoff_len")
    if context and isinstance(cutoff, int) and cutoff > context:
        text = (f"cutoff_len {cutoff} is beyond the model's context: max_position_embeddings is {context} in "
                f"{folder / 'config.json'}; positions past it were never trained")
        if cutoff > CONTEXT_ERROR_FACTOR * context:
            problems.append(Problem("cutoff_len", f"{text}; set cutoff_len to at most {context}", config.where("cutoff_len")))
        else:
            warnings.append(f"{text} (lower cutoff_len to {context} unless you mean to train past it)")
    name = config.get("template")
    source = tokenizer_chat_template(folder) if name else None
    if not source:
        return problems, warnings
    try:
        spec = manager.entry("template", str(name)).spec
    except Exception:  # an unknown template is the plan's problem, named there
        return problems, warnings
    markers = list((getattr(spec, "definition", None) or {}).get("detect") or [])
    if markers and all(m in source for m in markers):
        return problems, warnings
    try:
        detected = manager.hook.tuneforge_detect_template(tokenizer=SimpleNamespace(chat_template=source))
    except Exception:  # a plugin's detector that needs a real tokenizer: no verdict
        detected = None
    if detected == name:
        return problems, warnings
    if markers and detected:
        family = f"is the '{detected}' family (it lacks {', '.join(repr(m) for m in markers if m not in source)})"
        advice = f"set template: {detected} (or leave template unset) to train in the format the model was made for"
    else:
        family = f"looks like '{detected}'" if detected else "is of no family tuneforge knows"
        advice = "check that this is the format you mean to train"
    warnings.append(f"template '{name}' ({config.where('template')}) does not match the tokenizer's own chat template in "
                    f"{folder}, which {family}: {_excerpt(source)!r}; the model will learn '{name}''s format "
                    f"(and its saved tokenizer gets that template); {advice}")
    return problems, warnings
