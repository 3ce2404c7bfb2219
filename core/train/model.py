"""Load the model the plan describes: loader, quantizer, method, chat template, lifecycle hook."""

from __future__ import annotations

from ..errors import TuneforgeError
from .context import RunContext


def resolve_template(ctx: RunContext, tokenizer):
    """The plan's template, else the one a detection hook names for this tokenizer."""
    from ..data.template import Template

    entry = ctx.plan.template
    if entry is None:
        name = ctx.manager.hook.tuneforge_detect_template(tokenizer=tokenizer)
        if name is None:
            raise TuneforgeError(
                "template is not set and no plugin recognises this tokenizer's chat template; "
                f"set template: to one of {', '.join(ctx.manager.names('template'))}"
            )
        spec = ctx.manager.template(name)
    else:
        spec = entry.spec
    return Template.from_definition(spec.name, spec.definition)


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
    if not ctx.training:
        model.eval()
    ctx.model = model
    ctx.manager.hook.tuneforge_model_ready(ctx=ctx, model=model, tokenizer=tokenizer)
    return model, tokenizer
