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
    return tokenizer


def _auto_class(config):
    """AutoModelForImageTextToText for a vision-language checkpoint (its config has a vision part),
    AutoModelForCausalLM otherwise."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    try:
        model_config = AutoConfig.from_pretrained(config.model_name_or_path, **_common(config))
    except (OSError, ValueError):
        return AutoModelForCausalLM
    if getattr(model_config, "vision_config", None) is not None:
        return AutoModelForImageTextToText
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
    if config.flash_attn == "sdpa":
        kwargs["attn_implementation"] = "sdpa"
    elif config.flash_attn == "disabled":
        kwargs["attn_implementation"] = "eager"
    elif config.flash_attn in ("fa2", "fa3"):
        kwargs["attn_implementation"] = "flash_attention_2" if config.flash_attn == "fa2" else "flash_attention_3"
    if config.device_map is not None:
        kwargs["device_map"] = config.device_map
    kwargs.update(ctx.quantizer_load_kwargs())
    if config.train_from_scratch:
        model_config = AutoConfig.from_pretrained(config.model_name_or_path, **_common(config))
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
