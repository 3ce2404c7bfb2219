"""Gradient checkpointing chosen by the memory planner when the config does not choose.

LLaMA-Factory always checkpoints activations (unless ``disable_gradient_checkpointing``), which
recomputes every layer's forward in backward: about a third more compute. It only pays when the
activations would not fit. So when the config sets none of ``disable_gradient_checkpointing``,
``gradient_checkpointing`` or ``activation_checkpointing``, ``train`` asks the planner for the run's
peak with checkpointing off and turns it off when that peak, plus the runtime's reserve, fits the
device with a margin (:data:`MARGIN` of the device left free); otherwise on. ``train`` prints the
choice and the figures. The device is the first GPU's total memory, or on CPU the memory the system
reports available now (MemAvailable). Setting any of the keys keeps LLaMA-Factory's behaviour.
Either way the losses are the same (checkpointing recomputes, it does not approximate).
"""

from __future__ import annotations

#: Share of the device left free by a checkpointing-off plan (planner error, fragmentation, other processes).
MARGIN = 0.25
_KEYS = ("disable_gradient_checkpointing", "gradient_checkpointing", "activation_checkpointing")


def user_chose(config) -> bool:
    return any(config.is_set(k) and config.get(k) is not None for k in _KEYS)


def available_memory() -> tuple[int | None, str]:
    """(bytes, what they are) of the device training runs on."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return int(props.total_memory), f"{props.name} memory"
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return None, "memory"


def choose(ctx) -> tuple[bool, str]:
    """(checkpointing on?, why) for a config that leaves the choice open."""
    from ..planner import planned_processes, plan_memory, shape_from_config
    from ..planner.estimate import GiB, needed_with_reserve

    budget, what = available_memory()
    if budget is None:
        return True, "the device's memory is unknown"
    config = ctx.config.with_values(disable_gradient_checkpointing=True)
    try:
        plan = plan_memory(shape_from_config(config), config, method=ctx.plan.method.name,
                           processes=planned_processes(), stage=ctx.plan.stage.name)
    except Exception as exc:  # the planner is advice; without it keep LLaMA-Factory's default
        return True, f"the memory plan is unavailable ({type(exc).__name__})"
    needed = needed_with_reserve(plan.total)
    figures = f"planned peak without it {needed / GiB:.2f} GiB, {what} {budget / GiB:.2f} GiB"
    if needed <= budget * (1 - MARGIN):
        return False, f"{figures}: fits with {int(MARGIN * 100)}% to spare, so no recomputation"
    return True, f"{figures}: does not fit with {int(MARGIN * 100)}% to spare"


def decide(ctx, supported: bool) -> bool:
    """hf_trainer's default for activation_checkpointing when the config leaves it open; says why."""
    from ..ranks import is_main_process

    if not (ctx.training and supported):
        return False
    on, why = choose(ctx)
    ctx.extras["gradient_checkpointing_choice"] = (on, why)
    if is_main_process():
        print(f"gradient checkpointing: {'on' if on else 'off'} ({why}; set disable_gradient_checkpointing "
              "to choose yourself)", flush=True)
    return on
