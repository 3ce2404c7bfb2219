"""A Hugging Face generate() engine that renders prompts with the same template training used."""

from __future__ import annotations

from threading import Thread
from typing import Iterator

from ..plan import Prepared
from ..train.context import RunContext
from ..train.model import load_model


class ChatEngine:
    def __init__(self, prepared: Prepared):
        self.ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
        self.model, self.tokenizer = load_model(self.ctx)
        self.template = self.ctx.template

    def _generation_kwargs(self) -> dict:
        c = self.ctx.config
        kwargs = dict(
            max_new_tokens=c.max_new_tokens,
            do_sample=c.do_sample,
            repetition_penalty=c.repetition_penalty,
            num_beams=c.num_beams,
            eos_token_id=self.template.stop_token_ids(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if c.do_sample:
            kwargs.update(temperature=c.temperature, top_p=c.top_p, top_k=c.top_k)
        return kwargs

    def stream(self, messages: list[dict], system: str | None = None) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        system = system if system is not None else self.ctx.config.default_system
        ids = self.template.encode_prompt(self.tokenizer, messages, system)
        input_ids = torch.tensor([ids], device=self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=self.ctx.config.skip_special_tokens)
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer, **self._generation_kwargs())
        thread = Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        yield from streamer
        thread.join()

    def reply(self, messages: list[dict], system: str | None = None) -> str:
        return "".join(self.stream(messages, system))
