"""EETQ: int8 weight-only quantization on load (transformers' ``EetqConfig``). GPU only.

transformers 5 runs EETQ through the ``kernels`` package, whose int8 kernels are CUDA builds fetched from
the Hugging Face hub; there is no CPU path. On a machine without a CUDA GPU the plugin is listed as
``unavailable`` with that reason (decided without importing torch: ``nvidia-smi`` or the NVIDIA driver
must be present). Untested on CPU-only CI; check it on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from tuneforge import QuantizerSpec, hookimpl

from ._common import recognizer, device_map, freeze


def _has_cuda_driver() -> bool:
    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia/version")


def unavailable_reason() -> str | None:
    if not _has_cuda_driver():
        return "EETQ's int8 kernels run only on a CUDA GPU, and this machine has none (use bitsandbytes 8-bit on CPU)"
    if importlib.util.find_spec("kernels") is None:
        return "missing kernels (pip install kernels; transformers fetches EETQ's CUDA kernels from the hub with it)"
    return None


def load_kwargs(ctx) -> dict:
    if ctx.plan.prequantized:
        return device_map(ctx)
    from transformers import EetqConfig

    return {"quantization_config": EetqConfig("int8"), **device_map(ctx)}


def after_load(ctx, model):
    if ctx.training:
        freeze(model)
    return model


@hookimpl
def tuneforge_quantizers():
    return [
        QuantizerSpec(
            name="eetq",
            description="EETQ int8 weight-only quantization on load (quantization_bit: 8). Needs a CUDA GPU.",
            bits=(8,),
            unavailable_reason=unavailable_reason,
            load_kwargs=load_kwargs,
            after_load=after_load,
            recognizes=recognizer("eetq"),
        )
    ]
