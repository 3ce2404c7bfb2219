"""The built-in chat templates: every templates/*.yaml file becomes a ChatTemplateSpec.

Adding a model family is adding a YAML file (keys: docs/templates.md); no code changes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from tuneforge import ChatTemplateSpec, hookimpl


#: libyaml's safe loader when PyYAML was built with it: every CLI call, `--help` included, reads
#: these files, and the pure-Python loader takes a tenth of a second for them.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=1)
def _load() -> tuple[tuple[str, dict], ...]:
    out = []
    for item in sorted(resources.files("tuneforge.templates").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            out.append((item.name[: -len(".yaml")], yaml.load(item.read_text(encoding="utf-8"), Loader=_LOADER) or {}))
    return tuple(out)


def _definitions() -> dict[str, dict]:
    """Template name -> its rendering definition (a fresh copy; the YAML files are read once)."""
    return {name: {k: v for k, v in d.items() if k != "models"} for name, d in _load()}


def _known_models(name: str) -> tuple[tuple[str, str], ...]:
    """The ``models:`` list of a template file: (display name, hub id) pairs."""
    found = dict(_load()).get(name, {}).get("models") or []
    return tuple((m["name"], m["hub_id"]) for m in found)


@hookimpl
def tuneforge_chat_templates():
    return [
        ChatTemplateSpec(name=name, description=d.get("description", ""), definition=d, models=_known_models(name))
        for name, d in _definitions().items()
    ]


def detect_template(source: str, definitions: dict[str, dict]) -> str | None:
    """The template whose ``detect`` markers all occur in ``source``; the most specific one wins.

    Specificity is the number of markers, then their total length (so ``qwen``'s two markers beat
    ``chatml``'s one on a Qwen template); a template without markers is never detected.
    """
    best, best_score = None, (0, 0)
    for name, d in sorted(definitions.items()):
        markers = d.get("detect") or []
        if markers and all(m in source for m in markers):
            score = (len(markers), sum(len(m) for m in markers))
            if score > best_score:
                best, best_score = name, score
    return best


@hookimpl(trylast=True)
def tuneforge_detect_template(tokenizer):
    """Match the tokenizer's own Jinja template against each definition's ``detect`` markers."""
    source = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(source, dict):  # named templates: {"default": ..., "tool_use": ...}
        source = source.get("default") or ""
    if not isinstance(source, str) or not source:
        return None
    return detect_template(source, _definitions())
