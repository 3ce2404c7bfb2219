"""What the built-in quantizers share. Not a plugin itself (it registers nothing) and light to import:
no torch at module level, because `tuneforge check` runs the validators below before anything loads.

What cannot run on quantized base weights (a method that trains them, merging adapters into them) is
decided by the core from the chosen method's spec (``MethodSpec.trains_base_weights``), for every
quantizer alike; a quantizer's own ``validate`` checks only its own keys.
"""

from __future__ import annotations

import logging
import os

from tuneforge.plugin_helpers import checkpoint_quantization, quant_method  # noqa: F401 (re-exported)


def recognizer(method: str, *, legacy_keys: tuple[str, ...] = ()):
    """A QuantizerSpec.recognizes that matches checkpoints whose quantization_config names ``method``
    (or, with no quant_method at all, sets one of ``legacy_keys``: older bitsandbytes checkpoints)."""

    def recognizes(quantization_config: dict) -> bool:
        if quantization_config.get("quant_method"):
            return quant_method(quantization_config) == method
        return any(quantization_config.get(key) for key in legacy_keys)

    return recognizes


def group_bytes_per_weight(name: str, key: str | None = None, default_group: int = 64):
    """A QuantizerSpec.bytes_per_weight: ``bits`` per weight plus two fp16 constants (scale, zero)
    per group of ``default_group`` weights, or of the config's ``key``."""

    def bytes_per_weight(bits: int, config) -> tuple[float, str]:
        group = int(config.get(key) or default_group) if key else default_group
        return bits / 8 + 4 / group, f"{bits}-bit + 2 x fp16 constants per {group} (approximate for {name})"

    return bytes_per_weight


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
