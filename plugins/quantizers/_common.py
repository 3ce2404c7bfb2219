"""What the built-in quantizers share. Not a plugin itself (it registers nothing) and light to import:
no torch at module level, because `tuneforge check` runs the validators below before anything loads.

The `check`-time rules for quantized weights live here, once, and every quantizer's ``validate`` calls
:func:`quantized_weight_problems`. They apply both when ``quantization_bit`` quantizes a model on load
and when the checkpoint itself is already quantized (its config.json has a ``quantization_config``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

#: Methods that update the base weights themselves, and the flag that selects each optimizer method.
FULL_WEIGHT_METHODS = ("full", "freeze", "galore", "apollo", "badam")
OPTIMIZER_FLAGS = {"use_galore": "GaLore", "use_apollo": "APOLLO", "use_badam": "BAdam"}


def names(value) -> list[str]:
    """LLaMA-Factory's comma lists: ``"a, b"`` or ``["a", "b"]``; None is empty."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def checkpoint_quantization(path) -> dict | None:
    """The ``quantization_config`` of a local checkpoint's config.json, read without transformers."""
    if not path or not (Path(str(path)) / "config.json").is_file():
        return None
    try:
        data = json.loads((Path(str(path)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quantization = data.get("quantization_config")
    return quantization if isinstance(quantization, dict) else None


def recognizer(method: str):
    """A QuantizerSpec.recognizes that matches checkpoints whose quantization_config names ``method``."""

    def recognizes(quantization_config: dict) -> bool:
        return quant_method(quantization_config) == method

    return recognizes


def quant_method(quantization_config: dict) -> str:
    """The method a checkpoint's quantization_config names (older bnb checkpoints have only load_in_*bit)."""
    method = quantization_config.get("quant_method")
    if method:
        return str(getattr(method, "value", method)).lower()
    if quantization_config.get("load_in_4bit") or quantization_config.get("load_in_8bit"):
        return "bitsandbytes"
    return "unknown"


def quantized_by(config) -> str | None:
    """How this run's base weights are quantized, in words for messages; None when they are not."""
    prequantized = checkpoint_quantization(config.get("model_name_or_path"))
    if prequantized is not None:
        return f"the checkpoint is already quantized ({quant_method(prequantized)})"
    if config.get("quantization_bit") is not None:
        method = config.get("quantization_method")
        return f"quantization_bit: {config.get('quantization_bit')}" + (f" with {method}" if method else "")
    return None


def is_export(config) -> bool:
    """Whether the config describes `tuneforge export` (LLaMA-Factory's merge configs set export_dir)."""
    return bool(config.get("export_dir"))


def quantized_weight_problems(config) -> list[str]:
    """Everything that cannot run on quantized base weights, found from the config alone."""
    source = quantized_by(config)
    if source is None:
        return []
    prequantized = checkpoint_quantization(config.get("model_name_or_path")) is not None
    unquantize = ("set model_name_or_path to the original full-precision model" if prequantized
                  else "remove quantization_bit")
    out = []

    method = config.get("finetuning_type")
    flags = [key for key in OPTIMIZER_FLAGS if config.get(key)]
    if method in FULL_WEIGHT_METHODS or flags:
        what = f"finetuning_type: {method}" if method in FULL_WEIGHT_METHODS and not flags else f"{flags[0]}: true"
        out.append(
            f"{what} updates the base weights, which are quantized ({source}) and cannot be trained; "
            f"train adapters on them instead (QLoRA: finetuning_type: lora, dora or rslora), or {unquantize}"
        )

    if config.get("pissa_init") or method == "pissa":
        out.append(
            f"PiSSA (pissa_init) initialises the adapter from an SVD of the full-precision weights and writes the "
            f"residual back into them, which cannot be done on quantized weights ({source}); use plain LoRA, or "
            f"{unquantize}"
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith("loftq"):
        out.append(
            f"LoftQ (init_lora_weights: {init}) quantizes the full-precision weights itself while it initialises the "
            f"adapter, so it needs the unquantized model ({source}); {unquantize}"
        )

    adapters = names(config.get("adapter_name_or_path"))
    if is_export(config) and adapters:
        out.append(
            f"export merges the adapter into the base model, which cannot be done on quantized weights ({source}): "
            f"export from the unquantized base instead ({unquantize}); set export_quantization_bit to quantize the "
            "merged model"
        )
    elif len(adapters) > 1 or (adapters and config.get("create_new_adapter")):
        merged = adapters if config.get("create_new_adapter") else adapters[:-1]
        out.append(
            f"adapter_name_or_path: merging {', '.join(merged)} into quantized weights ({source}) is not supported; "
            "merge the adapters into the unquantized base first (tuneforge export without quantization_bit), "
            "then train on the merged model"
        )
    return out


def device_map(ctx) -> dict:
    """``device_map`` for quantized loading: quantization_device_map: auto, else this process's device.

    Nothing when the user set ``device_map`` (the loader passes theirs through).
    """
    config = ctx.config
    if config.get("device_map") is not None:
        return {}
    if config.get("quantization_device_map") == "auto":
        return {"device_map": "auto"}
    import torch

    if torch.cuda.is_available():
        return {"device_map": {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}}
    return {"device_map": {"": "cpu"}}


def freeze(model) -> None:
    """Quantized base weights never train: the method (LoRA) adds what does."""
    for param in model.parameters():
        param.requires_grad_(False)


def linear_count(model, cls) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


class OnceFilter(logging.Filter):
    """Let a log message through once per process (bitsandbytes logs one note per matmul)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def log_once(logger_name: str, prefix: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, OnceFilter) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(OnceFilter(prefix))
