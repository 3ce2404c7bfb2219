"""AWQ: train LoRA on an AWQ checkpoint (recognised from its config.json without any key).

AWQ checkpoints are made ahead of time with calibration data (AutoAWQ, now gptqmodel); transformers 5
loads them through gptqmodel, so this plugin needs the ``gptq`` extra. It does not quantize on load:
``quantization_bit`` with ``quantization_method: awq`` is an error. Loading and training an AWQ checkpoint
on CPU has not been exercised by this project's tests (they have no AWQ checkpoint to load offline).
"""

from __future__ import annotations

from tuneforge import QuantizerSpec, Requirement, hookimpl

from ._common import checkpoint_quantization, device_map, group_bytes_per_weight, recognizer
from ._gptqmodel import INSTALL, set_cpu_workers, unavailable_reason


def load_kwargs(ctx) -> dict:
    set_cpu_workers(ctx.config)
    return device_map(ctx)


def after_load(ctx, model):
    if not ctx.training:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def validate(config, plan) -> list[str]:
    problems = []
    if config.get("quantization_bit") is not None and checkpoint_quantization(config.get("model_name_or_path")) is None:
        problems.append("AWQ needs calibration data and does not quantize on load: load an AWQ checkpoint without "
                        "quantization_bit, or quantize on load with quantization_method: bitsandbytes or hqq")
    return problems


@hookimpl
def tuneforge_quantizers():
    return [
        QuantizerSpec(
            name="awq",
            description=f"AWQ: LoRA on an AWQ checkpoint (recognised from its config.json); loads through gptqmodel ({INSTALL}).",
            requires=(Requirement("gptqmodel", INSTALL, "7.6.0"),),
            unavailable_reason=unavailable_reason,
            bits=(4,),
            load_kwargs=load_kwargs,
            after_load=after_load,
            recognizes=recognizer("awq"),
            bytes_per_weight=group_bytes_per_weight("awq", default_group=128),
            validate=validate,
        )
    ]
