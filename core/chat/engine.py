"""Inference engines: the interface chat, api and predict use, and how a run gets one.

An engine is a plugin (kind ``engine``, selected with ``infer_backend``; see
:class:`tuneforge.specs.InferenceEngineSpec`). ``spec.create(ctx)`` returns an object with the
methods of :class:`InferenceEngine`. Prompts are always rendered by the run's chat template
(``ctx.template``), the same one training used, so an engine only turns token ids into text.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Protocol


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: the generation keys of the config, overridable per request."""

    max_new_tokens: int = 1024
    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    num_beams: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    #: Stop strings: generation ends where one appears; the text returned ends before it.
    stop: tuple[str, ...] = ()
    skip_special_tokens: bool = True

    @classmethod
    def from_config(cls, config) -> "GenerationSettings":
        values = {f.name: config.get(f.name) for f in fields(cls) if f.name != "stop" and config.get(f.name) is not None}
        return cls(**values)

    def updated(self, **changes: Any) -> "GenerationSettings":
        """A copy with the given values; ``None`` means "keep the configured one"."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "stop" in changes:
            stop = changes["stop"]
            changes["stop"] = (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)
        if changes.get("temperature") == 0:  # OpenAI's temperature 0: greedy decoding, whatever do_sample says
            changes.pop("temperature")
            changes["do_sample"] = False
        return replace(self, **changes)


@dataclass
class Response:
    """One generated reply. ``finish_reason``: ``stop`` (a stop token or stop string) or ``length``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class TextStream(Protocol):
    """What :meth:`InferenceEngine.stream` returns: an iterator of text pieces.

    ``response`` holds the whole :class:`Response` once the iteration has ended; ``cancel()`` stops
    the generation early (a client went away).
    """

    response: Response | None

    def __iter__(self) -> Iterator[str]: ...

    def __next__(self) -> str: ...

    def cancel(self) -> None: ...


class InferenceEngine(Protocol):
    """The methods every engine provides. ``messages`` alternate user/observation and
    assistant/function turns and end with a user (or observation) turn, as
    :meth:`tuneforge.data.template.Template.encode_prompt` takes them.

    Optional, for servers that must bound and stop work (the API reads them with ``getattr`` and
    :func:`accepts_cancel`, so an engine written before them keeps working, unbounded):

    - ``context_length``: the most tokens (prompt + reply) the model takes, or None if unknown.
    - ``generate(..., cancel=event)``: a :class:`threading.Event` checked after every token; once it
      is set the generation ends at the next token and returns what it has.
    - ``media_modalities``: the media its messages may carry (``("images",)``: a message's
      ``images`` are file paths, one ``<image>`` each); absent or empty: text only, and the API and
      web UI refuse images rather than drop them.
    """

    name: str
    tokenizer: Any
    template: Any
    settings: GenerationSettings
    context_length: int | None

    def encode(self, messages: list[dict], system: str | None = None, tools: Any = None) -> list[int]:
        """The prompt ids for a conversation, rendered with the run's template."""

    def stream(self, messages: list[dict], system: str | None = None, tools: Any = None,
               settings: GenerationSettings | None = None) -> TextStream:
        """Generate one reply, piece by piece."""

    def generate(self, messages: list[dict], system: str | None = None, tools: Any = None,
                 settings: GenerationSettings | None = None, n: int = 1,
                 cancel: threading.Event | None = None) -> list[Response]:
        """Generate ``n`` replies to one conversation (stopped early once ``cancel`` is set)."""

    def generate_batch(self, prompts: list[list[int]], settings: GenerationSettings | None = None) -> list[Response]:
        """Generate one reply per prompt (token ids), batched (predictions)."""


def accepts_cancel(method) -> bool:
    """Whether an engine method takes ``cancel=`` (engines written before it existed do not)."""
    try:
        return "cancel" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------- stop strings


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


class StopText:
    """Cuts a stream of text pieces at the first stop string.

    A tail that could be the start of a stop string is held back until the next piece decides it, so
    no part of a stop string is ever emitted.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        text, found = cut_at_stop(self.buffer, self.stops)
        if found:
            self.buffer, self.stopped = "", True
            return text
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:k]):
                    hold = k
                    break
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class FinishedStream:
    """A :class:`TextStream` over a reply that is already complete (engines without token streaming)."""

    def __init__(self, response: Response):
        self._pending = [response.text] if response.text else []
        self._response = response
        self.response: Response | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self._pending:
            return self._pending.pop()
        self.response = self._response
        raise StopIteration

    def cancel(self) -> None:
        self._pending = []


# ----------------------------------------------------------------------------------- creation


def create_engine(ctx) -> InferenceEngine:
    """The engine the plan selected (``infer_backend``), created for this run context.

    When ``ctx.model`` is already loaded (predictions at the end of training) an engine that can
    serves it instead of loading the model again.
    """
    entry = ctx.plan.engine
    spec = entry.spec if entry is not None else ctx.manager.get("engine", str(ctx.config.infer_backend), key="infer_backend")
    return spec.create(ctx)


def engine_for(prepared) -> InferenceEngine:
    """An engine for a prepared config (``prepare(..., inference=True)``): chat and api use this."""
    from ..train.context import RunContext

    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    return create_engine(ctx)
