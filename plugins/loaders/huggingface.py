"""Load a causal LM and its tokenizer with transformers' Auto classes (local folder or hub id)."""

from __future__ import annotations

from tuneforge import ModelLoaderSpec, hookimpl

_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


def _common(config) -> dict:
    kwargs = {"trust_remote_code": config.trust_remote_code, "revision": config.model_revision}
    if config.cache_dir:
        kwargs["cache_dir"] = config.cache_dir
    if config.hf_hub_token:
        kwargs["token"] = config.hf_hub_token
    return kwargs


def load_tokenizer(ctx):
    from transformers import AutoTokenizer

    config = ctx.config
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path, use_fast=config.use_fast_tokenizer, **_common(config))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # model_max_length (LLaMA-Factory derives it from cutoff_len): a tokenizer that declares a shorter
    # maximum is enlarged to it, so long rows are not flagged as too long and the saved tokenizer says so.
    limit = config.get("model_max_length") or config.get("cutoff_len")
    if isinstance(limit, int) and limit > (tokenizer.model_max_length or 0):
        tokenizer.model_max_length = limit
    return tokenizer


def _auto_class(config):
    """AutoModelForImageTextToText for a vision-language checkpoint (its config has a vision part),
    AutoModelForMultimodalLM for an audio-language one (an audio part), AutoModelForCausalLM otherwise."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM

    try:
        model_config = AutoConfig.from_pretrained(config.model_name_or_path, **_common(config))
    except (OSError, ValueError):
        return AutoModelForCausalLM
    if getattr(model_config, "vision_config", None) is not None:
        return AutoModelForImageTextToText
    if getattr(model_config, "audio_config", None) is not None:
        return AutoModelForMultimodalLM
    return AutoModelForCausalLM


def load(ctx):
    import torch
    from transformers import AutoConfig

    config = ctx.config
    AutoModelForCausalLM = _auto_class(config)
    tokenizer = load_tokenizer(ctx)
    kwargs = _common(config)
    dtype = ctx.compute_dtype
    kwargs["dtype"] = dtype if dtype is not None else "auto"
    from tuneforge.train.model_config import apply_moe_aux_loss, apply_rope_scaling, attention_implementation

    attention = attention_implementation(config.flash_attn)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
    kwargs.update(ctx.quantizer_load_kwargs())
    model_config = None
    if config.train_from_scratch or config.rope_scaling or config.moe_aux_loss_coef is not None:
        model_config = AutoConfig.from_pretrained(config.model_name_or_path, **_common(config))
        changed = apply_rope_scaling(config, model_config, training=ctx.training)
        changed = apply_moe_aux_loss(config, model_config, training=ctx.training) or changed
        if changed:
            kwargs["config"] = model_config
    if config.train_from_scratch:
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype or torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path, low_cpu_mem_usage=config.low_cpu_mem_usage, **kwargs)
    return model, tokenizer


@hookimpl
def tuneforge_model_loaders():
    return [
        ModelLoaderSpec(
            name="huggingface",
            description="AutoModelForCausalLM / AutoTokenizer from a local folder or a hub id.",
            load=load,
            load_tokenizer=load_tokenizer,
        )
    ]
