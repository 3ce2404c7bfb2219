"""The run: load the planned model, hand it to the stage, tell plugins it ended."""

from __future__ import annotations

from ..plan import Prepared
from ..ranks import is_main_process
from . import host_memory
from .context import RunContext
from .model import load_model


def run_training(prepared: Prepared) -> RunContext:
    """Train; the returned context holds the trained model, tokenizer and metrics."""
    from .noise import silence_known_noise

    silence_known_noise()
    import transformers

    transformers.set_seed(prepared.config.seed)
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=True)
    load_model(ctx)
    main = is_main_process()
    said = host_memory.apply(ctx)
    if said and main:
        print(f"cpu memory: {said}", flush=True)
    if ctx.config.print_param_status and main:
        for name, param in ctx.model.named_parameters():
            print(f"{name}: {param.dtype} {param.device} trainable={param.requires_grad}")
    trainable = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in ctx.model.parameters())
    ctx.extras.update(trainable_parameters=trainable, total_parameters=total)
    if main:
        print(f"trainable params: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.4f}%) "
              f"[method {ctx.plan.method.name}]")
    ctx.metrics = ctx.plan.stage.spec.run(ctx) or {}
    ctx.manager.hook.tuneforge_run_end(ctx=ctx, metrics=ctx.metrics)
    return ctx
