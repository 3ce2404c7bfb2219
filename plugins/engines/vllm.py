"""``infer_backend: vllm``: generation with vLLM (CUDA GPU), the base model plus at most one LoRA adapter.

Uses LLaMA-Factory's keys: ``vllm_maxlen``, ``vllm_gpu_util``, ``vllm_enforce_eager``,
``vllm_max_lora_rank``, ``vllm_config`` (extra ``vllm.LLM`` arguments). Prompts are rendered by the
run's chat template and given to vLLM as token ids. Replies come whole (no token streaming).
"""

from __future__ import annotations

from tuneforge import ConfigKey, InferenceEngineSpec, Requirement, hookimpl

from ._gpu import WholeReplyEngine, no_cuda_reason, single_adapter

KEYS = (
    ConfigKey("vllm_maxlen", int, 4096, "vLLM: maximum sequence length (prompt + reply)."),
    ConfigKey("vllm_gpu_util", float, 0.7, "vLLM: fraction of GPU memory to use."),
    ConfigKey("vllm_enforce_eager", bool, False, "vLLM: disable CUDA graphs."),
    ConfigKey("vllm_max_lora_rank", int, 32, "vLLM: maximum LoRA rank."),
    ConfigKey("vllm_config", (str, dict), None, "vLLM: extra vllm.LLM arguments (a dict or a JSON string)."),
)


class VllmEngine(WholeReplyEngine):
    name = "vllm"

    def __init__(self, ctx):
        from vllm import LLM

        self._load_tokenizer(ctx)
        self.context_length = ctx.config.vllm_maxlen
        config = ctx.config
        self.adapter = single_adapter(ctx, "vllm")
        extra = config.vllm_config or {}
        if isinstance(extra, str):
            import json

            extra = json.loads(extra)
        self.llm = LLM(
            model=config.model_name_or_path, trust_remote_code=config.trust_remote_code,
            dtype=config.infer_dtype, max_model_len=config.vllm_maxlen, gpu_memory_utilization=config.vllm_gpu_util,
            enforce_eager=config.vllm_enforce_eager, enable_lora=self.adapter is not None,
            max_lora_rank=config.vllm_max_lora_rank, tokenizer=config.model_name_or_path, **extra,
        )

    def _complete(self, prompts, settings):
        from vllm import SamplingParams

        from tuneforge.chat.engine import Response, cut_at_stop

        params = SamplingParams(
            n=1, max_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0, top_k=settings.top_k if settings.do_sample else -1,
            stop=list(settings.stop) or None, stop_token_ids=self.stop_ids, skip_special_tokens=settings.skip_special_tokens,
        )
        lora = None
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("default", 1, self.adapter)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, lora_request=lora)
        out = []
        for prompt, result in zip(prompts, outputs):
            choice = result.outputs[0]
            text, _ = cut_at_stop(choice.text, settings.stop)
            reason = "length" if choice.finish_reason == "length" else "stop"
            out.append(Response(text, len(prompt), len(choice.token_ids), reason))
        return out


def create(ctx):
    return VllmEngine(ctx)


@hookimpl
def tuneforge_inference_engines():
    return [InferenceEngineSpec(
        name="vllm",
        description="vLLM generation on a CUDA GPU (one LoRA adapter; replies come whole).",
        keys=KEYS,
        requires=(Requirement("vllm", "pip install vllm"),),
        unavailable_reason=no_cuda_reason,
        create=create,
    )]
