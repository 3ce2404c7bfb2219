"""Second models a stage needs beside the one it trains: a frozen reference (dpo, kto, ppo) or a
reward model (ppo).

They load through the same plugins as the trained model (loader, quantizer, the adapters' method), in
the same compute dtype, so a reference differs from the policy only where the config says it does.
"""

from __future__ import annotations

from dataclasses import replace

from tuneforge.plugin_helpers import split_names


def adapter_method(ctx, path: str):
    """The method entry whose adapters ``path`` holds: the run's own method when its ``AdapterSpec``
    recognises the folder, else the first installed method whose spec does (asked of the specs, so a
    third-party adapter method serves as reference or reward model like a built-in one)."""
    from tuneforge.errors import TuneforgeError

    entries = [ctx.plan.method, *(e for e in ctx.manager.entries("method") if e is not ctx.plan.method)]
    for entry in entries:
        adapter = entry.spec.adapter
        if adapter is not None and entry.status == "active" and adapter.is_adapter_dir(str(path)):
            return entry
    raise TuneforgeError(f"{path} is not an adapter any installed method can load (no method's adapter spec "
                         "recognises the folder); `tuneforge plugins --kind method` lists the methods")


def load_frozen_model(ctx, model_path: str, adapters=None, quantization_bit: int | None = None):
    """``model_path`` (+ ``adapters``, merged but for the last, which stays attached as an adapter) as a model
    that never trains: eval mode, no parameter requires grad.

    The caller moves it to the training device (e.g. ``accelerator.prepare_model(model,
    evaluation_mode=True)``); it is loaded where the loader puts it, as the policy was.
    """
    from tuneforge.train.context import RunContext

    dtype = ctx.compute_dtype
    adapter_list = split_names(adapters)
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
    if adapter_list:
        plan = replace(plan, method=adapter_method(ctx, adapter_list[-1]))
    side = RunContext(config, plan, ctx.manager, training=False)
    model, _ = plan.loader.spec.load(side)
    if quantizer is not None and quantizer.spec.after_load is not None:
        model = quantizer.spec.after_load(side, model)
    if adapter_list:  # the method's apply loads adapter_name_or_path (merging all but the last)
        model = plan.method.spec.apply(side, model)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model
