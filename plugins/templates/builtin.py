"""The built-in chat templates: every templates/*.yaml file becomes a ChatTemplateSpec.

Adding a model family is adding a YAML file; no code changes.
"""

from __future__ import annotations

from importlib import resources

import yaml

from tuneforge import ChatTemplateSpec, hookimpl


def _definitions() -> dict[str, dict]:
    out = {}
    for item in sorted(resources.files("tuneforge.templates").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            out[item.name[: -len(".yaml")]] = yaml.safe_load(item.read_text(encoding="utf-8")) or {}
    return out


@hookimpl
def tuneforge_chat_templates():
    return [
        ChatTemplateSpec(name=name, description=d.get("description", ""), definition=d)
        for name, d in _definitions().items()
    ]


@hookimpl(trylast=True)
def tuneforge_detect_template(tokenizer):
    """Match the tokenizer's own Jinja template against each definition's ``detect`` markers."""
    source = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(source, str) or not source:
        return None
    best, best_hits = None, 0
    for name, d in _definitions().items():
        markers = d.get("detect") or []
        hits = sum(1 for m in markers if m in source)
        if markers and hits == len(markers) and hits > best_hits:
            best, best_hits = name, hits
    return best
