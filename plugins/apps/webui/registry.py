"""Known models for the web UI's model-name dropdown: a name fills in the hub id and the chat template,
so a user who picks "Qwen2.5-7B-Instruct" gets a config that runs.

The list comes from the installed template plugins (each ``ChatTemplateSpec.models``; the built-ins'
``models:`` in templates/*.yaml), so a third-party template brings its models along. It is a
convenience, not a gate: any local folder or hub id works in the model-path box, and the template can
be left to detection from the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

#: The model-name choice meaning "whatever the model path says".
CUSTOM = "Custom"


@dataclass(frozen=True)
class KnownModel:
    name: str
    hub_id: str
    template: str


def known_models(manager) -> tuple[KnownModel, ...]:
    """Every installed template's models, in template order (the first template to name a model wins)."""
    seen: dict[str, KnownModel] = {}
    for entry in manager.entries("template"):
        for name, hub_id in getattr(entry.spec, "models", ()) or ():
            seen.setdefault(name, KnownModel(name, hub_id, entry.name))
    return tuple(seen.values())


def model_names(manager) -> list[str]:
    """The dropdown's choices: Custom first, then the known models."""
    return [CUSTOM, *(m.name for m in known_models(manager))]


def known_model(manager, name: str | None) -> KnownModel | None:
    return next((m for m in known_models(manager) if m.name == (name or "")), None)


def model_key(model_name: str | None, model_path: str | None) -> str:
    """The folder name under the save root for this model: the known name, else the path's last part.

    LLaMA-Factory keeps runs under ``saves/<model name>/<method>/<run>``; a custom path such as
    ``saves/tiny-llama3`` files its runs under ``tiny-llama3``.
    """
    if model_name and model_name != CUSTOM:
        return model_name
    text = (model_path or "").strip().rstrip("/\\")
    return PurePath(text).name if text else "model"
