"""bitsandbytes: 4-bit (nf4/fp4, double quantization) and 8-bit (LLM.int8) weights, quantized on load.

``quantization_bit: 4`` or ``8`` with ``quantization_method: bitsandbytes`` (the default). ``bnb`` is
registered too, as a second name for the same plugin, because LLaMA-Factory calls it that; both names
are real registry entries, so ``tuneforge plugins`` lists both and the plan shows the one the config used.

QLoRA is this quantizer plus a LoRA-family method: ``after_load`` runs PEFT's
``prepare_model_for_kbit_training`` (base weights frozen, the non-quantized parameters such as norms
and embeddings cast to fp32) and the method then puts its adapters on the quantized linear layers.
Gradient checkpointing is left to the trainer (on by default, as in LLaMA-Factory), which also makes
the inputs require grad. bitsandbytes 0.50 has a CPU backend: 4-bit and 8-bit both train on CPU.

On a vision- or audio-language model (a template with a media handler) only the language model is
quantized: the encoders and the projector keep their weights (``vision_side_skips``).

A checkpoint saved already quantized with bitsandbytes is recognised from its config.json and loaded as
it is (transformers reads its ``quantization_config``).
"""

from __future__ import annotations

from dataclasses import replace

from tuneforge import ConfigKey, QuantizerSpec, Requirement, hookimpl
from tuneforge.plugin_helpers import ENCODER_PARTS, PROJECTOR_PARTS

from ._common import device_map, log_once, recognizer

BITS = (4, 8)

KEYS = (
    ConfigKey("quantization_type", str, "nf4", "4-bit data type (nf4 or fp4).", choices=("nf4", "fp4")),
    ConfigKey("double_quantization", bool, True, "4-bit: quantize the quantization constants too."),
)


def vision_side_skips() -> list[str]:
    """Modules a multimodal model keeps unquantized, as LLaMA-Factory does: its vision/audio encoders
    and projector (transformers' skip patterns: a regex from the start of the module path), and the
    output head, which transformers skips by default only when no list is given."""
    return [rf"(?:.*\.)?{part}" for part in ENCODER_PARTS + PROJECTOR_PARTS] + ["lm_head"]


def load_kwargs(ctx) -> dict:
    if ctx.plan.prequantized:  # the checkpoint's own quantization_config applies
        return device_map(ctx)
    import torch
    from transformers import BitsAndBytesConfig

    config = ctx.config
    compute = ctx.compute_dtype or torch.float32
    skip = vision_side_skips() if ctx.media is not None else None
    if config.quantization_bit == 4:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quantization_type,
            bnb_4bit_use_double_quant=bool(config.double_quantization),
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=skip,
        )
    else:
        quantization = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return {"quantization_config": quantization, **device_map(ctx)}


def after_load(ctx, model):
    import bitsandbytes as bnb

    four = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    eight = sum(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    if four + eight == 0:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError("bitsandbytes: the model loaded without any quantized linear layer; "
                             "check that transformers' bitsandbytes integration is installed and working")
    if eight:
        # bitsandbytes logs this once per matmul on CPU; once per run says it.
        log_once("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast")
    config = ctx.config
    if four:
        what = f"{four} linear layers in 4-bit {config.quantization_type if not ctx.plan.prequantized else ''}".rstrip()
    else:
        what = f"{eight} linear layers in 8-bit (LLM.int8)"
    print(f"bitsandbytes: {what}{' (checkpoint already quantized)' if ctx.plan.prequantized else ''}")
    if not ctx.training:
        return model
    if config.pure_bf16:
        from ._common import freeze

        freeze(model)  # pure_bf16 keeps every weight in bf16: no fp32 casts
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def bytes_per_weight(bits: int, config) -> tuple[float, str]:
    """4-bit: a 4-bit code plus an absmax per block of 64 (itself 8-bit with double quantization);
    8-bit: an int8 code plus an fp32 scale per output row (counted as 1 byte)."""
    if bits == 4:
        if config.get("double_quantization", True):
            # absmax per 64 weights quantized to 8 bits, plus an fp32 absmax per 256 of those blocks
            return 0.5 + 1 / 64 + 4 / (64 * 256), "4-bit + 8-bit absmax per 64 (double quantization)"
        return 0.5 + 4 / 64, "4-bit + fp32 absmax per 64"
    return 1.0, "int8 + an fp32 scale per output row"


SPEC = QuantizerSpec(
    name="bitsandbytes",
    description=("bitsandbytes 4-bit (nf4/fp4, quantization_type; double_quantization) or 8-bit (LLM.int8) "
                 "weights, quantized on load; QLoRA with a LoRA-family method. Runs on CPU (bitsandbytes >= 0.50)."),
    keys=KEYS,
    requires=(Requirement("bitsandbytes", "pip install 'tuneforge[quant]'", "0.50.2"),),
    bits=BITS,
    load_kwargs=load_kwargs,
    after_load=after_load,
    recognizes=recognizer("bitsandbytes", legacy_keys=("load_in_4bit", "load_in_8bit")),
    bytes_per_weight=bytes_per_weight,
    upcasts_unquantized=True,
)

#: LLaMA-Factory's name for the same quantizer (quantization_method: bnb). It does not claim already
#: quantized checkpoints: `bitsandbytes` does, so the plan names one plugin for them.
ALIAS = replace(SPEC, name="bnb", description="LLaMA-Factory's name for bitsandbytes (same plugin, same keys).",
                recognizes=None)


@hookimpl
def tuneforge_quantizers():
    return [SPEC, ALIAS]
