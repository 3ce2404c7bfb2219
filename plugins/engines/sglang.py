"""``infer_backend: sglang``: generation with SGLang's offline engine (CUDA GPU).

Uses LLaMA-Factory's keys: ``sglang_maxlen``, ``sglang_mem_fraction``, ``sglang_tp_size``,
``sglang_config`` (extra ``sglang.Engine`` arguments). Prompts are rendered by the run's chat
template and given as token ids. Replies come whole (no token streaming).
"""

from __future__ import annotations

from tuneforge import ConfigKey, InferenceEngineSpec, Requirement, hookimpl

from ._gpu import WholeReplyEngine, no_cuda_reason, single_adapter

KEYS = (
    ConfigKey("sglang_maxlen", int, 4096, "SGLang: maximum sequence length (prompt + reply)."),
    ConfigKey("sglang_mem_fraction", float, 0.7, "SGLang: static memory fraction."),
    ConfigKey("sglang_tp_size", int, -1, "SGLang: tensor parallel size (-1: SGLang's default)."),
    ConfigKey("sglang_config", (str, dict), None, "SGLang: extra sglang.Engine arguments (a dict or a JSON string)."),
    ConfigKey("sglang_lora_backend", str, "triton", "SGLang: kernels of the LoRA layers (triton or flashinfer).",
              choices=("triton", "flashinfer")),
)


class SglangEngine(WholeReplyEngine):
    name = "sglang"

    def __init__(self, ctx):
        import sglang

        self._load_tokenizer(ctx)
        self.context_length = ctx.config.sglang_maxlen
        config = ctx.config
        self.adapter = single_adapter(ctx, "sglang")
        extra = config.sglang_config or {}
        if isinstance(extra, str):
            import json

            extra = json.loads(extra)
        kwargs = dict(model_path=config.model_name_or_path, trust_remote_code=config.trust_remote_code,
                      dtype=config.infer_dtype, context_length=config.sglang_maxlen,
                      mem_fraction_static=config.sglang_mem_fraction, **extra)
        if config.sglang_tp_size and config.sglang_tp_size > 0:
            kwargs["tp_size"] = config.sglang_tp_size
        if self.adapter is not None:
            kwargs["lora_paths"] = [self.adapter]
            kwargs.setdefault("lora_backend", config.sglang_lora_backend)
        self.llm = sglang.Engine(**kwargs)

    def _complete(self, prompts, settings):
        from tuneforge.chat.engine import Response, cut_at_stop

        params = {
            "max_new_tokens": settings.max_new_tokens, "repetition_penalty": settings.repetition_penalty,
            "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0, "top_k": settings.top_k if settings.do_sample else -1,
            "stop": list(settings.stop) or None, "stop_token_ids": self.stop_ids,
            "skip_special_tokens": settings.skip_special_tokens,
        }
        kwargs = {"lora_path": [self.adapter] * len(prompts)} if self.adapter else {}
        results = self.llm.generate(input_ids=prompts, sampling_params=params, **kwargs)
        out = []
        for prompt, result in zip(prompts, results):
            meta = result.get("meta_info", {})
            finish = meta.get("finish_reason") or {}
            reason = "length" if (finish.get("type") if isinstance(finish, dict) else finish) == "length" else "stop"
            text, _ = cut_at_stop(result["text"], settings.stop)
            out.append(Response(text, len(prompt), int(meta.get("completion_tokens", 0)), reason))
        return out


def create(ctx):
    return SglangEngine(ctx)


@hookimpl
def tuneforge_inference_engines():
    return [InferenceEngineSpec(
        name="sglang",
        description="SGLang generation on a CUDA GPU (one LoRA adapter; replies come whole).",
        keys=KEYS,
        requires=(Requirement("sglang", "pip install 'sglang[all]'"),),
        unavailable_reason=no_cuda_reason,
        create=create,
    )]
