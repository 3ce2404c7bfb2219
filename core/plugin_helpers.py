"""Public helpers for plugin authors: what several plugins (built-in or third-party) need and would
otherwise copy. Light to import (no torch), because `tuneforge check` runs validators that use them.

Everything here is documented in docs/writing-plugins.md and kept stable across minor versions. A
helper names no plugin: what a plugin can do is asked of its spec (``plan.method.spec.adapter``,
``plan.quantizer.spec.bits``), never decided from a list of plugin names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .plugin_manager import split_names
from .train.outputs import smooth_curve

__all__ = [
    "checkpoint_bits", "checkpoint_quantization", "deepspeed_stage", "quant_method", "quantized_by", "smooth_curve",
    "split_names", "world_size",
]


def checkpoint_quantization(path) -> dict | None:
    """The ``quantization_config`` of a local checkpoint's config.json, read without transformers;
    ``None`` for an unquantized, unreadable or remote model."""
    if not path or not (Path(str(path)) / "config.json").is_file():
        return None
    try:
        data = json.loads((Path(str(path)) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quantization = data.get("quantization_config") if isinstance(data, dict) else None
    return quantization if isinstance(quantization, dict) else None


def quant_method(quantization_config: dict) -> str:
    """The ``quant_method`` a checkpoint's quantization_config names, lower case ("unknown" when absent)."""
    method = quantization_config.get("quant_method")
    return str(getattr(method, "value", method)).lower() if method else "unknown"


def checkpoint_bits(quantization_config: dict) -> int:
    """Bits per weight of an already quantized checkpoint, from the keys the libraries write
    (``load_in_4bit``/``load_in_8bit``, ``bits``, ``w_bit``, ``weights``); 4 when none says."""
    if quantization_config.get("load_in_4bit"):
        return 4
    if quantization_config.get("load_in_8bit"):
        return 8
    bits = quantization_config.get("bits") or quantization_config.get("w_bit") or quantization_config.get("weights")
    try:
        return int(bits)
    except (TypeError, ValueError):
        return 4


def quantized_by(config, plan=None) -> str | None:
    """How this run's base weights are quantized, in words for messages; ``None`` when they are not.

    Without the resolved ``plan`` the checkpoint's config.json is read again.
    """
    prequantized = getattr(plan, "prequantized", None)
    if prequantized is None and plan is None:
        found = checkpoint_quantization(config.get("model_name_or_path"))
        prequantized = quant_method(found) if found is not None else None
    if prequantized is not None:
        return f"the checkpoint is already quantized ({prequantized})"
    if config.get("quantization_bit") is not None:
        method = getattr(getattr(plan, "quantizer", None), "name", None) or config.get("quantization_method")
        return f"quantization_bit: {config.get('quantization_bit')}" + (f" with {method}" if method else "")
    return None


def world_size(config: Any = None) -> int:
    """Processes this run will have, from the launcher's environment (torchrun / LLaMA-Factory's CLI); with
    ``config`` and USE_RAY=1, the Ray Train workers it asks for (``ray_num_workers``)."""

    def number(var: str) -> int:
        try:
            return max(int(os.environ.get(var) or 1), 1)
        except ValueError:
            return 1

    if os.environ.get("WORLD_SIZE"):
        return number("WORLD_SIZE")
    if config is not None and os.environ.get("USE_RAY", "0").strip().lower() in ("1", "true", "y", "yes", "on"):
        return max(int(config.get("ray_num_workers") or 1), 1)
    return number("NPROC_PER_NODE") * number("NNODES")


def deepspeed_stage(config: Any) -> int | None:
    """ZeRO stage of the ``deepspeed`` config (a path or a dict); None without DeepSpeed or if unreadable."""
    value = config.get("deepspeed")
    if not value:
        return None
    if isinstance(value, (str, Path)):
        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    try:
        return int(value.get("zero_optimization", {}).get("stage", 0))
    except (AttributeError, TypeError, ValueError):
        return None


#: Module-path parts of a vision/audio-language model's encoders (vision or audio tower) and of its
#: projector (merger): what freeze_vision_tower / freeze_multi_modal_projector freeze, and where LoRA's
#: `lora_target: all` does not go.
ENCODER_PARTS = ("visual", "vision_tower", "vision_model", "audio_tower")
PROJECTOR_PARTS = ("merger", "multi_modal_projector")
