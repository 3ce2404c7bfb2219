"""Helpers the built-in method plugins share. Not a plugin itself (it registers nothing) and light to
import: no torch here, because `tuneforge check` runs the validators below."""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Keys that only mean something for LoRA-family methods, with LLaMA-Factory's error for each.
LORA_ONLY = ("loraplus_lr_ratio", "use_dora", "use_rslora", "pissa_init")

#: The optimizer-level methods and the boolean key that selects each (LLaMA-Factory's names).
OPTIMIZER_FLAGS = {"galore": "use_galore", "apollo": "use_apollo", "badam": "use_badam"}


def names(value) -> list[str]:
    """LLaMA-Factory's comma lists: ``"a, b"`` or ``["a", "b"]``; None is empty."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def lora_only_problems(config, method: str) -> list[str]:
    """LoRA-only keys set on a method that is not LoRA: an error, as in LLaMA-Factory."""
    out = []
    for key in LORA_ONLY:
        value = config.get(key)
        if value not in (None, False):
            what = "LoRA+ (loraplus_lr_ratio)" if key == "loraplus_lr_ratio" else key
            out.append(f"{what} needs a LoRA method (finetuning_type: lora, dora, rslora or pissa), not '{method}'")
    return out


def world_size() -> int:
    """Processes this run will have, from the launcher's environment (torchrun / LLaMA-Factory's CLI)."""

    def number(var: str) -> int:
        try:
            return max(int(os.environ.get(var) or 1), 1)
        except ValueError:
            return 1

    if os.environ.get("WORLD_SIZE"):
        return number("WORLD_SIZE")
    return number("NPROC_PER_NODE") * number("NNODES")


def deepspeed_stage(config) -> int | None:
    """ZeRO stage of the ``deepspeed`` config (a path or a dict); None without DeepSpeed or if unreadable."""
    value = config.get("deepspeed")
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
    try:
        return int(value.get("zero_optimization", {}).get("stage", 0))
    except (AttributeError, TypeError, ValueError):
        return None


def base_tuning(config, method: str) -> str:
    """What an optimizer-level method trains: 'full' (default) or 'freeze' (``finetuning_type: freeze``)."""
    chosen = config.get("finetuning_type") if config.is_set("finetuning_type") else None
    return "freeze" if chosen == "freeze" else "full"


def optimizer_method_problems(config, method: str) -> list[str]:
    """What GaLore, APOLLO and BAdam share: how they compose with finetuning_type and with each other."""
    out = []
    flag = OPTIMIZER_FLAGS[method]
    others = [f for m, f in OPTIMIZER_FLAGS.items() if m != method and config.get(f)]
    if others:
        out.append(f"{flag} cannot be combined with {', '.join(others)}: choose one optimizer method")
    if config.is_set("finetuning_type"):
        chosen = config.get("finetuning_type")
        if chosen in OPTIMIZER_FLAGS and chosen != method:
            out.append(f"finetuning_type: {chosen} and {flag}: true select two optimizer methods; choose one")
        elif chosen not in ("full", "freeze", method, *OPTIMIZER_FLAGS):
            out.append(
                f"{method} is an optimizer for full or freeze tuning and cannot be used with finetuning_type: {chosen} "
                f"(set finetuning_type: full or freeze, or drop {flag})"
            )
    out += lora_only_problems(config, method)
    return out


def layerwise_problems(config, method: str, key: str) -> list[str]:
    """Layer-wise optimizers step inside backward: no accumulation, one process."""
    if not config.get(key):
        return []
    out = []
    accumulation = config.get("gradient_accumulation_steps") or 1
    if accumulation > 1:
        out.append(f"{key} steps each layer during backward and cannot accumulate gradients "
                   f"(gradient_accumulation_steps is {accumulation}; set it to 1 or drop {key})")
    processes = world_size()
    if processes > 1:
        out.append(f"{key} does not support distributed training ({processes} processes from WORLD_SIZE/NPROC_PER_NODE)")
    return out


def projection_problems(config, prefix: str, label: str, optims) -> list[str]:
    """Check-time rules GaLore and APOLLO share (rank, update interval, optim, DeepSpeed, layer-wise)."""
    from . import freeze

    problems = optimizer_method_problems(config, prefix)
    if base_tuning(config, prefix) == "freeze":
        problems += freeze.freeze_problems(config)
    if config.get(f"{prefix}_rank") is not None and config.get(f"{prefix}_rank") <= 0:
        problems.append(f"{prefix}_rank must be positive")
    interval = config.get(f"{prefix}_update_interval")
    if interval is not None and interval <= 0:
        problems.append(f"{prefix}_update_interval must be a positive number of steps")
    optim = config.get("optim")
    if optim not in optims:
        problems.append(f"{label} supports optim {', '.join(optims)}; not '{optim}'")
    if config.get("deepspeed"):
        problems.append(f"{label} cannot be used with DeepSpeed (its optimizer state is not partitioned); drop deepspeed")
    problems += layerwise_problems(config, prefix, f"{prefix}_layerwise")
    return problems
