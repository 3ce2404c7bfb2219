"""Known model families for the web UI's model-name dropdown: a name fills in the hub id and the
chat template, so a user who picks "Qwen2.5-7B-Instruct" gets a config that runs.

This is a convenience list, not a gate: any local folder or hub id works in the model-path box, and
the template can be left to detection from the tokenizer. Adding a family is adding a row here.
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


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("Llama-3-8B", "meta-llama/Meta-Llama-3-8B", "default"),
    KnownModel("Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
    KnownModel("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", "llama3"),
    KnownModel("Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", "llama3"),
    KnownModel("Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "llama3"),
    KnownModel("Llama-2-7B-Chat", "meta-llama/Llama-2-7b-chat-hf", "llama2"),
    KnownModel("Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen"),
    KnownModel("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "qwen"),
    KnownModel("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "qwen"),
    KnownModel("Qwen3-0.6B", "Qwen/Qwen3-0.6B", "qwen3"),
    KnownModel("Qwen3-4B", "Qwen/Qwen3-4B", "qwen3"),
    KnownModel("Qwen3-8B", "Qwen/Qwen3-8B", "qwen3"),
    KnownModel("Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "mistral"),
    KnownModel("Gemma-2-2B-Instruct", "google/gemma-2-2b-it", "gemma"),
    KnownModel("Gemma-2-9B-Instruct", "google/gemma-2-9b-it", "gemma"),
    KnownModel("Gemma-3-4B-Instruct", "google/gemma-3-4b-it", "gemma3"),
    KnownModel("Phi-4", "microsoft/phi-4", "phi4"),
    KnownModel("Yi-1.5-6B-Chat", "01-ai/Yi-1.5-6B-Chat", "yi"),
    KnownModel("GLM-4-9B-Chat", "THUDM/glm-4-9b-chat", "glm4"),
    KnownModel("DeepSeek-V3", "deepseek-ai/DeepSeek-V3", "deepseek3"),
    KnownModel("InternLM2.5-7B-Chat", "internlm/internlm2_5-7b-chat", "intern2"),
    KnownModel("Baichuan2-7B-Chat", "baichuan-inc/Baichuan2-7B-Chat", "baichuan2"),
)

_BY_NAME = {m.name: m for m in KNOWN_MODELS}


def model_names() -> list[str]:
    """The dropdown's choices: Custom first, then the known families."""
    return [CUSTOM, *(m.name for m in KNOWN_MODELS)]


def known_model(name: str | None) -> KnownModel | None:
    return _BY_NAME.get(name or "")


def model_key(model_name: str | None, model_path: str | None) -> str:
    """The folder name under the save root for this model: the known name, else the path's last part.

    LLaMA-Factory keeps runs under ``saves/<model name>/<method>/<run>``; a custom path such as
    ``saves/tiny-llama3`` files its runs under ``tiny-llama3``.
    """
    if model_name and model_name != CUSTOM:
        return model_name
    text = (model_path or "").strip().rstrip("/\\")
    return PurePath(text).name if text else "model"
