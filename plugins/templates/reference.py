"""Reference Jinja chat templates of real model families (templates/reference/*.jinja).

``llama3``, ``qwen2``, ``qwen3``, ``mistral`` and ``gemma`` are written to render like those models'
published Hugging Face chat templates (the parts the tiny test models need: system, turns, tools,
thinking); the tiny-model builder puts them into the tokenizers it builds. ``deepseekcoder``,
``orion``, ``granite3``, ``phi_small``, ``deepseek`` and ``cohere`` are the chat templates published with
deepseek-coder-33b-instruct, Orion-14B-Chat, granite-3.0-8b-instruct, Phi-3-small, DeepSeek-V2-Chat and
c4ai-command-r-plus, as they ship in
those models' tokenizer_config.json. The tests compare the built-in YAML templates against them, so
"renders like the real model" is checked in one place.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def reference_jinja(family: str) -> str:
    """The reference Jinja text for ``family`` (a file name under templates/reference/)."""
    path = resources.files("tuneforge.templates").joinpath("reference", f"{family}.jinja")
    if not path.is_file():
        known = sorted(p.name[: -len(".jinja")] for p in resources.files("tuneforge.templates").joinpath("reference").iterdir()
                       if p.name.endswith(".jinja"))
        raise KeyError(f"no reference chat template {family!r} (known: {', '.join(known)})")
    return path.read_text(encoding="utf-8")


def reference_families() -> list[str]:
    folder = resources.files("tuneforge.templates").joinpath("reference")
    return sorted(p.name[: -len(".jinja")] for p in folder.iterdir() if p.name.endswith(".jinja"))
