"""`tuneforge plan`: estimate the memory a training run needs on each device before starting it.

From the model's config.json (built on the meta device, so nothing is loaded) and the run's settings
(method, quantizer, stage, cutoff_len, batch, dtype, gradient checkpointing, processes, DeepSpeed
ZeRO), :func:`plan_for` counts parameters and trainable parameters exactly and estimates the bytes of
weights, gradients, optimizer state and activations per device, their peak, and, when a memory
budget is known, which setting to change when the run does not fit. The formulas are in
``estimate.py`` and docs/planner.md, the per-plugin rules they ask for (what a method trains, the bytes
of a quantized weight, ...) come from the plugins' specs through ``rules.py``; ``measure.py`` runs a few real steps to check them.

The planner's job is to say "fits / does not fit" and which knob saves the most; tests hold its peak
within 25% of the measured one on the tiny and small models for full, LoRA and QLoRA training.
"""

from __future__ import annotations

import os

from .estimate import GiB, MiB, Component, Knob, MemoryEstimate, estimate, plan_memory
from .shape import ModelShape, model_shape, shape_from_config

__all__ = [
    "Component", "GiB", "Knob", "MemoryEstimate", "MiB", "ModelShape", "estimate", "model_shape", "parse_size",
    "plan_for", "plan_memory", "planned_processes", "print_memory_plan", "shape_from_config",
]


def planned_processes(config=None) -> int:
    """How many processes `tuneforge train` would start with this environment: WORLD_SIZE inside a
    launcher, else ray_num_workers with USE_RAY=1 (given the config), else the launch NPROC_PER_NODE x
    NNODES (or the visible GPUs) asks for, else 1."""
    if os.environ.get("WORLD_SIZE"):
        from ..ranks import world_size

        return max(world_size(), 1)
    from ..train.ray_launcher import use_ray

    if config is not None and use_ray():
        return max(int(config.get("ray_num_workers") or 1), 1)
    from ..train.launcher import planned_launch

    launch = planned_launch()
    return launch.world_size if launch is not None else 1


def device_memory() -> int | None:
    """Total memory of the first visible GPU, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    return None


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": MiB,
          "g": 1000**3, "gb": 1000**3, "gib": GiB, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """``24GiB``, ``80 GB``, ``512MiB``, ``1.5T`` -> bytes (GB is 10^9, GiB 2^30; a bare number is bytes)."""
    import re

    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found.group(2).lower() if found else None
    if not found or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (write e.g. 24GiB, 80GB or 512MiB)")
    return int(float(found.group(1)) * _UNITS[unit])


def plan_for(prepared, *, processes: int | None = None, budget: int | None = None, shape: ModelShape | None = None,
             use_device_memory: bool = True) -> MemoryEstimate:
    """The memory plan of a prepared (validated) config; ``budget`` defaults to the visible GPU's memory."""
    if shape is None:
        try:
            shape = shape_from_config(prepared.config)
        except (OSError, ValueError, KeyError) as exc:
            from ..errors import TuneforgeError

            raise TuneforgeError(f"cannot read the model config of {prepared.config.model_name_or_path}: {exc}") from None
    if processes is None:
        processes = planned_processes(prepared.config)
    if budget is None and use_device_memory:
        budget = device_memory()
    return plan_memory(shape, prepared.config, method=prepared.plan.method.name, processes=processes, budget=budget,
                       stage=prepared.plan.stage.name, manager=prepared.manager)


def print_memory_plan(prepared, *, processes: int | None = None, budget: int | None = None, file=None) -> MemoryEstimate | None:
    """Print the plan's table (for `train` before it starts); a planner failure is a warning, never fatal."""
    import sys

    from .report import render_text

    out = file or sys.stdout
    try:
        result = plan_for(prepared, processes=processes, budget=budget)
    except Exception as exc:  # the plan is advice: a model it cannot read must not stop the run
        print(f"warning: memory plan unavailable: {type(exc).__name__}: {exc}", file=out)
        return None
    print(render_text(result), file=out)
    return result
