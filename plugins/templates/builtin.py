"""The built-in chat templates: every templates/*.yaml file becomes a ChatTemplateSpec.

Adding a model family is adding a YAML file (keys: docs/templates.md); no code changes.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from tuneforge import ChatTemplateSpec, hookimpl


#: libyaml's loader when present: about a hundred template files are read on every command.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=1)
def _load() -> tuple[tuple[str, dict], ...]:
    out = []
    for item in sorted(resources.files("tuneforge.templates").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml") and not item.name.startswith("_"):
            out.append((item.name[: -len(".yaml")], yaml.load(item.read_text(encoding="utf-8"), Loader=_LOADER) or {}))
    return tuple(out)


def _definitions() -> dict[str, dict]:
    """Template name -> its rendering definition (a fresh copy; the YAML files are read once)."""
    return {name: {k: v for k, v in d.items()
                   if k not in ("models", "media", "media_placeholders", "tool_format_names", "media_first")}
            for name, d in _load()}


def media_placeholders(name: str) -> dict[str, str]:
    """What the model's processor expects in the text per medium (``media_placeholders:`` of a template
    file, e.g. ``{image: "<|image|>"}``); empty for a text-only template."""
    return dict(dict(_load()).get(name, {}).get("media_placeholders") or {})


def _media(name: str):
    """The media handler a template file names: ``media: processor`` with ``media_placeholders`` (the
    generic, processor-driven one), a handler of this plugin (``media: qwen2_vl``), or None (text-only)."""
    definition = dict(_load()).get(name, {})
    key = definition.get("media")
    from ._media import HANDLERS
    from ._audio import HANDLERS as AUDIO
    from ._omni import HANDLERS as OMNI
    from ._video import HANDLERS as VIDEO

    handlers = {**HANDLERS, **VIDEO, **AUDIO, **OMNI}
    if key in handlers:
        return handlers[key]()
    from tuneforge.data.media import media_from_definition

    return media_from_definition(name, definition)


def _known_models(name: str) -> tuple[tuple[str, str], ...]:
    """The ``models:`` list of a template file: (display name, hub id) pairs."""
    found = dict(_load()).get(name, {}).get("models") or []
    return tuple((m["name"], m["hub_id"]) for m in found)


def _build_auto(tokenizer):
    from tuneforge.data.tokenizer_template import TokenizerTemplate

    return TokenizerTemplate.from_tokenizer(tokenizer)


#: A two-exchange conversation with reasoning in the first reply: what `check` renders to see whether
#: the model's own template keeps earlier turns as they were (the prefix property).
_PROBE = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6."},
]


def _auto_validate(config, plan) -> list[str]:
    return _auto_problems(config)


def _auto_problems(config) -> list[str]:
    """A local model without a chat template cannot use ``auto``: said at `check`, not at training."""
    from pathlib import Path

    path = Path(str(config.model_name_or_path or ""))
    if not path.is_dir() or not (path / "tokenizer_config.json").is_file():
        return []
    import json

    try:
        data = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    if data.get("chat_template") or (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return []
    return [f"{path} has no chat template of its own (no chat_template in tokenizer_config.json, no chat_template.jinja); "
            "set template: to a built-in name"]


def _auto_notes(config) -> list[str]:
    """How the local model's own template will be used, rendered once on a probe conversation."""
    from pathlib import Path

    path = Path(str(config.model_name_or_path or ""))
    if not path.is_dir() or _auto_problems(config):
        return []
    from transformers import AutoTokenizer

    from tuneforge.data.tokenizer_template import RenderError, TokenizerTemplate

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        template = TokenizerTemplate.from_tokenizer(tokenizer)
        rewritten = template.history_rewritten(tokenizer, _PROBE)
    except (RenderError, OSError, ValueError) as exc:
        return [f"the model's own chat template could not render a probe conversation: {exc}"]
    notes = [template.how]
    if rewritten:
        notes.append("this chat template renders earlier turns differently once the conversation goes on (e.g. it drops "
                     "past reasoning), so multi-turn rows train only their last reply, in the context the model sees at "
                     "inference (`tuneforge data` counts them)")
    return notes


AUTO = ChatTemplateSpec(
    name="auto",
    description="The tokenizer's own Jinja chat template (tokenizer_config.json / chat_template.jinja), "
                "with exact reply masks; see docs/templates.md",
    build=_build_auto,
    validate=_auto_validate,
    notes=_auto_notes,
)


#: Why a multimodal template name cannot run yet (the same reason for each, so `check` says it).
NEEDS_VISION = "needs the vision support (issue 17): images, video and audio are not in the data pipeline yet"


@lru_cache(maxsize=1)
def multimodal_names() -> dict[str, str]:
    """LLaMA-Factory's multimodal template names (templates/_multimodal.yaml) -> the models they are for."""
    path = resources.files("tuneforge.templates").joinpath("_multimodal.yaml")
    return dict(yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) or {})


def _needs_vision() -> str:
    return NEEDS_VISION


@hookimpl
def tuneforge_chat_templates():
    vision = [ChatTemplateSpec(name=name, description=f"{models} (multimodal; {NEEDS_VISION.split(':')[0]})",
                               unavailable_reason=_needs_vision)
              for name, models in multimodal_names().items()]
    return vision + [AUTO] + [
        ChatTemplateSpec(name=name, description=d.get("description", ""), definition=d, models=_known_models(name),
                         media=_media(name), tool_format_names=tuple(dict(_load())[name].get("tool_format_names") or ()))
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
