"""The Chat tab's model: loaded in the server process through the same engine `tuneforge chat` uses.

One model is held for the whole server (as in LLaMA-Factory's web UI), so a reloaded page finds it
still loaded. Loading goes through :func:`tuneforge.plan.prepare` with ``inference=True``: the
config is checked exactly as `tuneforge chat CONFIG` checks it, and the engine plugin selected by
``infer_backend`` serves it. torch is imported only when a model is loaded.
"""

from __future__ import annotations

import gc
import json
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import yaml


class ChatSession:
    def __init__(self, manager):
        self.manager = manager
        self.engine = None
        self.config: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def load(self, config: dict[str, Any]) -> dict[str, Any]:
        """Load the model (plus adapters) ``config`` names; returns what was loaded.

        Raises :class:`tuneforge.errors.TuneforgeError` with every config problem when it cannot.
        """
        from tuneforge.chat.engine import engine_for
        from tuneforge.plan import prepare

        with self._lock:
            self._unload()
            with tempfile.TemporaryDirectory(prefix="tuneforge-webui-chat-") as folder:
                path = Path(folder) / "chat.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
                prepared = prepare(path, manager=self.manager, inference=True)
            self.engine = engine_for(prepared)
            self.config = dict(config)
            return {"model": config.get("model_name_or_path"), "adapters": config.get("adapter_name_or_path"),
                    "template": getattr(self.engine.template, "name", "?"), "engine": self.engine.name}

    def unload(self) -> None:
        with self._lock:
            self._unload()

    def _unload(self) -> None:
        if self.engine is None:
            return
        self.engine = None
        self.config = {}
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def stream(self, messages: list[dict], system: str | None = None, tools: str | None = None,
               **settings: Any) -> Iterator[str]:
        """The reply to ``messages``, piece by piece. ``settings`` override the generation keys
        (max_new_tokens, top_p, temperature, ...)."""
        engine = self.engine
        if engine is None:
            raise RuntimeError("no model is loaded")
        tool_list = parse_tools(tools)
        generation = engine.settings.updated(**settings)
        yield from engine.stream(messages, system=system or None, tools=tool_list, settings=generation)


def parse_tools(text: str | None) -> list[dict] | None:
    """The tools box: a JSON list of tool schemas (empty: no tools)."""
    if not text or not text.strip():
        return None
    try:
        tools = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"tools: not valid JSON ({exc})") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise ValueError("tools: write a JSON list of tool schemas")
    return tools


def message_text(content: Any) -> str:
    """A chatbot message's text, whether gradio hands it over as a string or as content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return "" if content is None else str(content)


def short_error(exc: BaseException) -> str:
    """What to show for an error: our own errors speak for themselves, others get their type."""
    from tuneforge.errors import TuneforgeError

    return str(exc) if isinstance(exc, TuneforgeError) else f"{type(exc).__name__}: {exc}"
