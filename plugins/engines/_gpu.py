"""What the GPU-only engines share: a cheap CUDA check and engines that generate whole replies."""

from __future__ import annotations

import os
import shutil


def no_cuda_reason() -> str | None:
    """Why there is no CUDA GPU here, decided without importing torch (``tuneforge plugins`` stays fast)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "needs a CUDA GPU (CUDA_VISIBLE_DEVICES hides every device)"
    if shutil.which("nvidia-smi") or os.path.exists("/proc/driver/nvidia/version"):
        return None
    return "needs a CUDA GPU (no NVIDIA driver found)"


def single_adapter(ctx, engine: str) -> str | None:
    from tuneforge.plugin_manager import split_names

    adapters = split_names(ctx.config.adapter_name_or_path)
    if len(adapters) > 1:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(f"infer_backend: {engine} serves one LoRA adapter; merge the others first "
                             f"(`tuneforge export`) or use infer_backend: huggingface")
    return adapters[0] if adapters else None


class WholeReplyEngine:
    """The chat/api methods built on one ``_complete(prompts, settings)`` that returns whole replies.

    vLLM and SGLang engines batch well but are driven here without token streaming: ``stream``
    yields the finished reply in one piece. A ``cancel`` set before the call skips the generation;
    one already running is not interrupted (their offline ``LLM.generate`` has no per-token hook).
    """

    name = ""
    context_length: int | None = None

    def encode(self, messages, system=None, tools=None) -> list[int]:
        config = self.ctx.config
        system = system if system is not None else config.default_system
        return self.template.encode_prompt(self.tokenizer, messages, system, tools, enable_thinking=config.enable_thinking)

    def stream(self, messages, system=None, tools=None, settings=None):
        from tuneforge.chat.engine import FinishedStream

        return FinishedStream(self.generate(messages, system, tools, settings)[0])

    def generate(self, messages, system=None, tools=None, settings=None, n: int = 1, cancel=None):
        ids = self.encode(messages, system, tools)
        if cancel is not None and cancel.is_set():
            from tuneforge.chat.engine import Response

            return [Response("", len(ids), 0, "stop")] * n
        return self._complete([ids] * n, settings or self.settings)

    def generate_batch(self, prompts, settings=None):
        return self._complete([list(p) for p in prompts], settings or self.settings)

    def _load_tokenizer(self, ctx):
        if ctx.model is not None:
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"infer_backend: {self.name} loads the model from model_name_or_path and cannot serve the model "
                                 "this run holds in memory (just trained); use infer_backend: huggingface here, or predict "
                                 "later with adapter_name_or_path set to the run's output_dir")
        from tuneforge.train.model import load_tokenizer

        load_tokenizer(ctx)
        self.ctx, self.tokenizer, self.template = ctx, ctx.tokenizer, ctx.template
        from tuneforge.chat.engine import GenerationSettings

        self.settings = GenerationSettings.from_config(ctx.config)
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
