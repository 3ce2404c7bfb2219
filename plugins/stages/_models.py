"""Second models a stage needs beside the one it trains: a frozen reference (dpo, kto, ppo) or a
reward model (ppo).

They load through the same plugins as the trained model (loader, quantizer, LoRA for adapters), in
the same compute dtype, so a reference differs from the policy only where the config says it does.
"""

from __future__ import annotations

from dataclasses import replace


def _names(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def load_frozen_model(ctx, model_path: str, adapters=None, quantization_bit: int | None = None):
    """``model_path`` (+ ``adapters``, merged but for the last, which stays a PEFT adapter) as a model
    that never trains: eval mode, no parameter requires grad.

    The caller moves it to the training device (e.g. ``accelerator.prepare_model(model,
    evaluation_mode=True)``); it is loaded where the loader puts it, as the policy was.
    """
    from tuneforge.train.context import RunContext

    dtype = ctx.compute_dtype
    adapter_list = _names(adapters)
    config = ctx.config.with_values(
        model_name_or_path=str(model_path),
        adapter_name_or_path=",".join(adapter_list) or None,
        quantization_bit=quantization_bit,
        create_new_adapter=False,
        infer_dtype=str(dtype).removeprefix("torch.") if dtype is not None else "auto",
    )
    quantizer = None
    if quantization_bit is not None:
        quantizer = ctx.manager.entry("quantizer", str(config.quantization_method), key="quantization_method")
    plan = replace(ctx.plan, quantizer=quantizer, prequantized=None)
    side = RunContext(config, plan, ctx.manager, training=False)
    model, _ = plan.loader.spec.load(side)
    if quantizer is not None and quantizer.spec.after_load is not None:
        model = quantizer.spec.after_load(side, model)
    if adapter_list:
        model = ctx.manager.method("lora").apply(side, model)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
