"""``infer_backend: huggingface``: transformers' ``generate()`` on the planned model (plus adapters).

Token streaming runs ``generate`` in a thread that hands token ids to the caller through a queue;
stop strings are cut on the decoded text; a cancelled stream (a client that went away) stops the
generation at the next token, and so does ``generate(..., cancel=event)``. Batches are left-padded.
"""

from __future__ import annotations

import queue
import threading

from tuneforge import InferenceEngineSpec, hookimpl
from tuneforge.chat.engine import GenerationSettings, Response, StopText, cut_at_stop


class HuggingfaceEngine:
    name = "huggingface"

    def __init__(self, ctx):
        if ctx.model is None:
            from tuneforge.train.model import load_model

            load_model(ctx)
        self.ctx = ctx
        self.model = ctx.model
        self.tokenizer = ctx.tokenizer
        self.template = ctx.template
        self.settings = GenerationSettings.from_config(ctx.config)
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.context_length = context_length(self.model.config)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.stop_ids or [0])[0]
        if self.model.training:
            self.model.eval()

    @property
    def media_modalities(self) -> tuple[str, ...]:
        """The media this engine takes in messages (``images``...): the template's media handler's."""
        media = getattr(self.ctx, "media", None)
        return tuple(media.modalities) if media is not None else ()

    # ------------------------------------------------------------------ prompts

    def encode(self, messages, system=None, tools=None) -> list[int]:
        config = self.ctx.config
        system = system if system is not None else config.default_system
        messages, _ = self._with_media(messages)
        return self.template.encode_prompt(self.tokenizer, messages, system, tools, enable_thinking=config.enable_thinking)

    def _with_media(self, messages) -> tuple[list[dict], dict]:
        """Messages with their images (a message's ``images``: file paths, one ``<image>`` each) turned
        into the model's media tokens, and the model inputs those need; text-only models refuse images."""
        files = [p for m in messages for p in (m.get("images") or [])]
        if not files:
            return messages, {}
        media = getattr(self.ctx, "media", None)
        if media is None or "images" not in media.modalities:
            from tuneforge.errors import TuneforgeError

            name = self.template.name if self.template is not None else "?"
            raise TuneforgeError(f"template '{name}' is text-only: it cannot take images; use a vision-language model "
                                 "with its multimodal template (e.g. template: qwen2_vl)")
        from tuneforge.errors import TuneforgeError

        found = sum(m["content"].count("<image>") for m in messages)
        if found != len(files):
            raise TuneforgeError(f"{len(files)} image(s) but {found} <image> placeholder(s) in the messages")
        for path in files:
            from tuneforge.data.media import _unreadable

            why = _unreadable(str(path), "images")
            if why:
                raise TuneforgeError(f"image '{path}' {why}")
        model_path = str(self.ctx.config.model_name_or_path)
        expanded = media.expand([{k: v for k, v in m.items() if k != "images"} for m in messages],
                                {"images": files}, model_path, self.tokenizer)
        return expanded, media.inputs([{"images": files}], model_path, self.tokenizer)

    def _media_kwargs(self, messages, input_ids) -> dict:
        """pixel_values & co. for generate(), plus mm_token_type_ids marking the media tokens."""
        _, extra = self._with_media(messages)
        if not extra:
            return {}
        import torch

        device = self.model.device
        extra = {k: v.to(device) for k, v in extra.items()}
        key = self.ctx.media.token_types_key(str(self.ctx.config.model_name_or_path))
        if key is None:
            return extra
        kinds = torch.zeros_like(input_ids)
        for token, kind in self.ctx.media.media_token_ids(self.tokenizer).items():
            kinds[input_ids == token] = kind
        return {**extra, key: kinds}

    def _decode(self, ids, settings: GenerationSettings) -> str:
        ids = [i for i in ids if i not in self.stop_ids]
        return self.tokenizer.decode(ids, skip_special_tokens=settings.skip_special_tokens)

    def _generation_config(self, settings: GenerationSettings, n: int = 1):
        from transformers import GenerationConfig

        kwargs = dict(
            max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, num_beams=settings.num_beams,
            repetition_penalty=settings.repetition_penalty, eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
            num_return_sequences=n, use_cache=True,
        )
        if settings.num_beams > 1:
            kwargs["length_penalty"] = settings.length_penalty
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        return GenerationConfig(**kwargs)

    def _finish(self, tokens: list[int], text: str, stopped_by_text: bool, settings: GenerationSettings, prompt_len: int) -> Response:
        ended = stopped_by_text or (bool(tokens) and tokens[-1] in self.stop_ids)
        reason = "stop" if ended or len(tokens) < settings.max_new_tokens else "length"
        return Response(text=text, prompt_tokens=prompt_len, completion_tokens=len(tokens), finish_reason=reason)

    def _rows(self, sequences, width: int, settings: GenerationSettings, prompt_lens: list[int]) -> list[Response]:
        out = []
        for row, prompt_len in zip(sequences.tolist(), prompt_lens):
            tokens = row[width:]
            for i, token in enumerate(tokens):
                if token in self.stop_ids:
                    tokens = tokens[: i + 1]
                    break
            text, found = cut_at_stop(self._decode(tokens, settings), settings.stop)
            out.append(self._finish(tokens, text, found, settings, prompt_len))
        return out

    # ------------------------------------------------------------------ generation

    def stream(self, messages, system=None, tools=None, settings=None):
        settings = settings or self.settings
        ids = self.encode(messages, system, tools)
        if settings.num_beams > 1:  # transformers cannot stream beam search
            from tuneforge.chat.engine import FinishedStream

            return FinishedStream(self._generate([ids], settings, 1, media=messages)[0])
        return _Stream(self, ids, settings, media=messages)

    def generate(self, messages, system=None, tools=None, settings=None, n: int = 1, cancel=None) -> list[Response]:
        settings = settings or self.settings
        ids = self.encode(messages, system, tools)
        if n > 1 and not settings.do_sample:  # greedy decoding has one answer
            return self._generate([ids], settings, 1, cancel, media=messages) * n
        return self._generate([ids], settings, n, cancel, media=messages)

    def generate_batch(self, prompts, settings=None) -> list[Response]:
        return self._generate([list(p) for p in prompts], settings or self.settings, 1)

    def _generate(self, prompts: list[list[int]], settings: GenerationSettings, n: int,
                  cancel: threading.Event | None = None, media: list[dict] | None = None) -> list[Response]:
        import torch
        from transformers import StoppingCriteriaList

        width = max(len(p) for p in prompts)
        device = self.model.device
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        criteria = StoppingCriteriaList(([_StopStrings(self, width, settings)] if settings.stop else [])
                                        + ([_Cancel(cancel)] if cancel is not None else []))
        with torch.inference_mode():
            extra = self._media_kwargs(media, input_ids) if media is not None and len(prompts) == 1 else {}
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **extra,
                                      generation_config=self._generation_config(settings, n), stopping_criteria=criteria)
        lens = [len(p) for p in prompts for _ in range(n)]
        return self._rows(out, width, settings, lens)


def context_length(config) -> int | None:
    """The most positions the model takes (prompt + reply), from its config; None if it does not say."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _StopStrings:
    """Stop a row once its generated text holds a stop string (per-row, for batches)."""

    def __init__(self, engine: HuggingfaceEngine, width: int, settings: GenerationSettings):
        self.engine, self.width, self.settings = engine, width, settings

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [cut_at_stop(self.engine._decode(row[self.width :].tolist(), self.settings), self.settings.stop)[1] for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _Cancel:
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _QueueStreamer:
    """transformers' streamer protocol: ``put`` gets the prompt first, then each new token."""

    def __init__(self, out: queue.Queue):
        self.out = out
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.out.put(value.reshape(-1).tolist())

    def end(self):
        pass


class _Stream:
    """A reply generated in a thread, read piece by piece (see :class:`tuneforge.chat.engine.TextStream`)."""

    def __init__(self, engine: HuggingfaceEngine, ids: list[int], settings: GenerationSettings, media: list[dict] | None = None):
        import torch
        from transformers import StoppingCriteriaList

        self.engine, self.settings, self.prompt_len = engine, settings, len(ids)
        self.response: Response | None = None
        self.tokens: list[int] = []
        self.text = ""
        self.stopper = StopText(settings.stop)
        self._cancel = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        input_ids = torch.tensor([ids], device=engine.model.device)
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=_QueueStreamer(self._queue),
                      **(engine._media_kwargs(media, input_ids) if media is not None else {}),
                      generation_config=engine._generation_config(settings), stopping_criteria=StoppingCriteriaList([_Cancel(self._cancel)]))
        self._thread = threading.Thread(target=self._run, args=(kwargs,), daemon=True)
        self._thread.start()

    def _run(self, kwargs):
        import torch

        try:
            with torch.inference_mode():
                self.engine.model.generate(**kwargs)
        except BaseException as exc:  # handed to the reader, which raises it
            self._queue.put(exc)
        finally:
            self._queue.put(None)

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        while self.response is None:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._thread.join()
                self.response = Response(self.text, self.prompt_len, len(self.tokens), "error")
                raise item
            if item is None:
                self._thread.join()
                final = self.engine._decode(self.tokens, self.settings)  # a tail held back for an unfinished character
                rest = self.stopper.feed(final[len(self.text):]) + self.stopper.flush()
                self.text = final
                text, _ = cut_at_stop(self.text, self.settings.stop)
                self.response = self.engine._finish(self.tokens, text, self.stopper.stopped, self.settings, self.prompt_len)
                if rest:
                    return rest
                break
            self.tokens += item
            text = self.engine._decode(self.tokens, self.settings)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
                continue
            new, self.text = text[len(self.text):], text
            out = self.stopper.feed(new)
            if self.stopper.stopped:
                self.cancel()
            if out:
                return out
        raise StopIteration


def create(ctx) -> HuggingfaceEngine:
    return HuggingfaceEngine(ctx)


@hookimpl
def tuneforge_inference_engines():
    return [InferenceEngineSpec(
        name="huggingface",
        description="transformers generate() on the planned model and adapters (CPU or GPU; token streaming).",
        create=create,
    )]
