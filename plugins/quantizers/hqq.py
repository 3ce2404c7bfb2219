"""HQQ (half-quadratic quantization): 1-8 bit weights without calibration data, with hqq's own API.

transformers 5's ``HqqConfig`` cannot quantize on load (``NotImplementedError: QuantizationMethod.HQQ
is not available yet``), so this plugin loads the model in full precision and then, in ``after_load``,
replaces every linear layer but the output head with ``hqq.core.quantize.HQQLinear`` (the original
weights are freed layer by layer). PEFT wraps HQQLinear as its ``HqqLoraLinear``, so the LoRA family
trains on top, on CPU too.

Keys: ``hqq_group_size`` (weights per quantization group, a multiple of 8; 0 = one group per row) and
``hqq_axis`` (the axis groups run along: 1, the default, is what hqq's fast kernels and PEFT expect; 0
is usually more accurate). Supported bits: 1, 2, 3, 4, 5, 6 and 8 (hqq has no 7-bit packing).

HQQLinear is not a ``torch.nn.Linear``: name the target modules in ``lora_target`` unless the LoRA
plugin's ``lora_target: all`` counts quantized linear layers (see docs/quantization.md).
"""

from __future__ import annotations

import os

from tuneforge import ConfigKey, QuantizerSpec, Requirement, hookimpl

from ._common import checkpoint_quantization, freeze, group_bytes_per_weight, recognizer

BITS = (1, 2, 3, 4, 5, 6, 8)

KEYS = (
    ConfigKey("hqq_group_size", int, 64, "HQQ: weights per quantization group (a multiple of 8; 0 = whole rows)."),
    ConfigKey("hqq_axis", int, 1, "HQQ: axis the groups run along (1: hqq's default and fastest; 0: often more accurate).",
              choices=(0, 1)),
)


def quant_config(config) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig

    group_size = config.hqq_group_size or None
    return BaseQuantizeConfig(nbits=int(config.quantization_bit), group_size=group_size, axis=config.hqq_axis)


def quantize_linears(model, quant, compute_dtype, skip=(), device=None) -> int:
    """Replace every nn.Linear of ``model`` but those in ``skip`` with an HQQLinear on ``device`` (default:
    where the layer is); returns the count."""
    import torch
    from hqq.core.quantize import HQQLinear

    skip_ids = {id(m) for m in skip}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and id(child) not in skip_ids:
                where = str(device or child.weight.device)
                setattr(parent, name, HQQLinear(child, quant, compute_dtype=compute_dtype, device=where))
                count += 1
    return count


def after_load(ctx, model):
    import torch

    compute = ctx.compute_dtype or next(model.parameters()).dtype
    if compute not in (torch.float32, torch.float16, torch.bfloat16):
        compute = torch.float32
    config = ctx.config
    # On a GPU machine the layers quantize (and stay) on this process's GPU; the rest follows with the trainer.
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else None
    count = quantize_linears(model, quant_config(config), compute, skip=[model.get_output_embeddings()], device=device)
    model.hqq_quantized = True  # PEFT's prepare_model_for_kbit_training and our checks read this
    group = config.hqq_group_size or "whole rows"
    print(f"hqq: {count} linear layers quantized to {config.quantization_bit}-bit "
          f"(group size {group}, axis {config.hqq_axis}, compute {str(compute).removeprefix('torch.')})")
    if ctx.training:
        freeze(model)
    return model


def validate(config, plan) -> list[str]:
    problems = []
    if checkpoint_quantization(config.get("model_name_or_path")) is not None:
        problems.append("a checkpoint saved with HQQ weights cannot be loaded: transformers 5 does not restore HQQ "
                        "layers (HqqConfig is not available yet); load the full-precision model with quantization_bit "
                        "and quantization_method: hqq, which quantizes it after loading")
    size = config.get("hqq_group_size")
    if size is not None and (size < 0 or size % 8):
        problems.append(f"hqq_group_size must be a multiple of 8 (or 0 for whole rows), not {size}")
    return problems


@hookimpl
def tuneforge_quantizers():
    return [
        QuantizerSpec(
            name="hqq",
            description=("HQQ: 1-8 bit weights without calibration data (hqq_group_size, hqq_axis); the model loads "
                         "in full precision, then its linear layers become hqq's HQQLinear. LoRA trains on top, on CPU too."),
            keys=KEYS,
            requires=(Requirement("hqq", "pip install 'tuneforge[quant]'", "0.2.8"),),
            bits=BITS,
            after_load=after_load,
            recognizes=recognizer("hqq"),
            bytes_per_weight=group_bytes_per_weight("hqq", "hqq_group_size", 64),
            validate=validate,
        )
    ]
