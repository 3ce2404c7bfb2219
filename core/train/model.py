"""Load the model the plan describes: loader, quantizer, method, chat template, lifecycle hook."""

from __future__ import annotations

import dataclasses

from ..errors import TuneforgeError
from .context import RunContext


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
            from ..data.template import with_tool_format

            definition = with_tool_format(definition, ctx.manager.template(str(tool_format)).definition)
        template = Template.from_definition(spec.name, definition)
    preserve = ctx.config.get("preserve_thinking")
    return template if preserve is None else dataclasses.replace(template, preserve_thinking=bool(preserve))


def load_tokenizer(ctx: RunContext):
    loader = ctx.plan.loader.spec
    tokenizer = loader.load_tokenizer(ctx) if loader.load_tokenizer else loader.load(ctx)[1]
    ctx.tokenizer = tokenizer
    ctx.template = resolve_template(ctx, tokenizer)
    return tokenizer


def load_model(ctx: RunContext):
    """Return ``(model, tokenizer)`` ready to train (ctx.training) or to generate."""
    model, tokenizer = ctx.plan.loader.spec.load(ctx)
    ctx.tokenizer = tokenizer
    ctx.template = resolve_template(ctx, tokenizer)
    quantizer = ctx.plan.quantizer
    if quantizer is not None and quantizer.spec.after_load is not None:
        model = quantizer.spec.after_load(ctx, model)
    model = ctx.plan.method.spec.apply(ctx, model)
    if ctx.training:
        upcast_trainable_params(ctx, model)
    else:
        model.eval()
    ctx.model = model
    ctx.manager.hook.tuneforge_model_ready(ctx=ctx, model=model, tokenizer=tokenizer)
    return model, tokenizer


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
