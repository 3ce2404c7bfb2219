"""Load the model the plan describes: loader, quantizer, method, chat template, lifecycle hook."""

from __future__ import annotations

import dataclasses

from ..errors import TuneforgeError
from ..plugin_helpers import ENCODER_PARTS as VISION_TOWER, PROJECTOR_PARTS as PROJECTOR
from .context import RunContext
from .vocab import add_to_tokenizer, embedding_module_names, grows_vocab, resize_embeddings


def resolve_template(ctx: RunContext, tokenizer):
    """The plan's template, else the one a detection hook names for this tokenizer, else the
    tokenizer's own Jinja chat template (what ``template: auto`` selects)."""
    from ..data.template import Template
    from ..data.tokenizer_template import TokenizerTemplate, chat_template_source

    entry = ctx.plan.template
    if entry is None:
        name = ctx.manager.hook.tuneforge_detect_template(tokenizer=tokenizer)
        if name is None:
            if chat_template_source(tokenizer) is None:
                raise TuneforgeError(
                    "template is not set, no plugin recognises this tokenizer and it has no chat template of its own; "
                    f"set template: to one of {', '.join(ctx.manager.names('template'))}"
                )
            import logging

            logging.getLogger(__name__).warning(
                "template is not set and no built-in template matches this tokenizer: using its own chat template (template: auto)")
            spec = None
        else:
            spec = ctx.manager.template(name)
    else:
        spec = entry.spec
    if spec is None:
        template = TokenizerTemplate.from_tokenizer(tokenizer)
    elif spec.build is not None:
        template = spec.build(tokenizer)
    else:
        definition = spec.definition
        tool_format = ctx.config.get("tool_format")
        if tool_format:
            from ..data.template import tool_format_template, with_tool_format

            tool_template = ctx.manager.template(tool_format_template(ctx.manager, str(tool_format)))
            definition = with_tool_format(definition, tool_template.definition)
        template = Template.from_definition(spec.name, definition)
    preserve = ctx.config.get("preserve_thinking")
    return template if preserve is None else dataclasses.replace(template, preserve_thinking=bool(preserve))


def load_tokenizer(ctx: RunContext):
    loader = ctx.plan.loader.spec
    tokenizer = loader.load_tokenizer(ctx) if loader.load_tokenizer else loader.load(ctx)[1]
    add_to_tokenizer(ctx.config, tokenizer)
    ctx.tokenizer = tokenizer
    ctx.template = resolve_template(ctx, tokenizer)
    return tokenizer


def load_model(ctx: RunContext):
    """Return ``(model, tokenizer)`` ready to train (ctx.training) or to generate."""
    model, tokenizer = ctx.plan.loader.spec.load(ctx)
    ctx.tokenizer = tokenizer
    ctx.template = resolve_template(ctx, tokenizer)
    if grows_vocab(ctx.config):
        _grow_vocab(ctx, model, tokenizer)
    quantizer = ctx.plan.quantizer
    if quantizer is not None and quantizer.spec.after_load is not None:
        model = quantizer.spec.after_load(ctx, model)
    if ctx.training:
        _upcast(ctx, model)
    model = ctx.plan.method.spec.apply(ctx, model)
    if ctx.training:
        freeze_multimodal_parts(ctx.config, model)
        upcast_trainable_params(ctx, model)
    else:
        model.eval()
    ctx.model = model
    ctx.manager.hook.tuneforge_model_ready(ctx=ctx, model=model, tokenizer=tokenizer)
    return model, tokenizer




def freeze_multimodal_parts(config, model) -> None:
    """LLaMA-Factory's freeze_vision_tower / freeze_multi_modal_projector (both true by default) and
    freeze_language_model, applied after the method chose what trains. Adapter weights (LoRA) are the
    method's and stay as it set them; a text-only model is left alone."""
    names = [name.split(".") for name, _ in model.named_parameters()]
    if not any(part in VISION_TOWER for parts in names for part in parts):
        return
    for name, param in model.named_parameters():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if any(p in PROJECTOR for p in parts):
            freeze = config.get("freeze_multi_modal_projector")
        elif any(p in VISION_TOWER for p in parts):
            freeze = config.get("freeze_vision_tower")
        else:
            freeze = config.get("freeze_language_model")
        if freeze:
            param.requires_grad_(False)


def _grow_vocab(ctx: RunContext, model, tokenizer) -> None:
    """New tokens get embedding rows; adapter methods also train and save the embedding layers."""
    add_to_tokenizer(ctx.config, tokenizer)
    resize_embeddings(ctx.config, model, tokenizer, training=ctx.training)
    owners = [e.name for e in ctx.manager.owned_keys().get("additional_target", [])]
    if ctx.training and ctx.plan.method.name in owners and not ctx.config.get("additional_target"):
        layers = embedding_module_names(model)
        ctx.config = ctx.config.with_values(additional_target=",".join(layers))
        print(f"new tokens: training and saving {', '.join(layers)} with the adapter (additional_target)")


def _upcast(ctx: RunContext, model) -> None:
    """LLaMA-Factory's upcast_layernorm (norm weights in fp32) and upcast_lmhead_output (fp32 logits),
    for runs that compute in bf16/fp16: small tensors whose precision matters most."""
    import torch

    if ctx.config.upcast_layernorm:
        count = 0
        for name, param in model.named_parameters():
            if param.ndim == 1 and "norm" in name.lower() and param.dtype != torch.float32:
                param.data = param.data.to(torch.float32)
                count += 1
        if count:
            print(f"upcast_layernorm: {count} norm weight(s) in float32")
    if ctx.config.upcast_lmhead_output:
        head = model.get_output_embeddings()
        if head is not None:
            head.register_forward_hook(lambda module, args, output: output.to(torch.float32))
            print("upcast_lmhead_output: logits in float32")


def upcast_trainable_params(ctx: RunContext, model) -> None:
    """Trainable parameters in fp32 when the model computes in bf16/fp16, as LLaMA-Factory does.

    Mixed precision then autocasts the computation while the optimizer updates fp32 weights. A method
    that keeps its own fp32 copies (BAdam) says ``keeps_trainable_dtype`` on its spec.
    """
    import torch

    if ctx.plan.method.spec.keeps_trainable_dtype or ctx.config.pure_bf16:
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)
