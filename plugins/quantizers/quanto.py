"""optimum-quanto: int8, int4 or int2 weights, quantized on load through transformers' ``QuantoConfig``.

quanto's ``QLinear`` is a ``torch.nn.Linear`` subclass holding a quantized weight tensor, so PEFT's
plain LoRA layer wraps it and ``lora_target: all`` finds it; the output head stays in full precision.
Activations are not quantized (``quanto_activations`` is not offered: transformers cannot train with
quantized activations).
"""

from __future__ import annotations

from tuneforge import QuantizerSpec, Requirement, hookimpl

from ._common import recognizer, device_map, freeze

WEIGHTS = {8: "int8", 4: "int4", 2: "int2"}


def load_kwargs(ctx) -> dict:
    if ctx.plan.prequantized:
        return device_map(ctx)
    from transformers import QuantoConfig

    return {"quantization_config": QuantoConfig(weights=WEIGHTS[ctx.config.quantization_bit]), **device_map(ctx)}


def after_load(ctx, model):
    from optimum.quanto import QLinear

    count = sum(isinstance(m, QLinear) for m in model.modules())
    bits = ctx.config.quantization_bit
    print(f"quanto: {count} linear layers with {WEIGHTS.get(bits, 'quantized')} weights")
    if ctx.training:
        freeze(model)
    return model


@hookimpl
def tuneforge_quantizers():
    return [
        QuantizerSpec(
            name="quanto",
            description="optimum-quanto int8/int4/int2 weights (quantization_bit 8/4/2), quantized on load; LoRA trains on top.",
            requires=(Requirement("optimum.quanto", "pip install 'tuneforge[quant]'", "0.2.7"),),
            bits=tuple(sorted(WEIGHTS)),
            load_kwargs=load_kwargs,
            after_load=after_load,
            recognizes=recognizer("quanto"),
        )
    ]
