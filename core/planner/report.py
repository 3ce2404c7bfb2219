"""The plan as a table for people and as JSON for machines."""

from __future__ import annotations

from dataclasses import asdict

from .estimate import Knob, MemoryEstimate, needed_with_reserve


def human(nbytes: float) -> str:
    """Binary units, three significant figures: 812 KiB, 10.0 MiB, 23.4 GiB."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def render_text(plan: MemoryEstimate) -> str:
    s = plan.settings
    share = 100 * plan.trainable / max(plan.parameters, 1)
    lines = [
        f"memory plan (estimate per device; {plan.processes} process{'es' if plan.processes != 1 else ''}, {s['deepspeed']})",
        f"  run: stage {plan.stage}, method {plan.method}"
        + (f", {s['quantization']}" if s["quantization"] else "")
        + f", {s['dtype']}, micro batch {s['micro_batch']} x cutoff_len {s['cutoff_len']}"
        + (" x 2 sequences" if s["sequences_per_example"] == 2 else "")
        + f", gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, optim {s['optim']}",
        f"  parameters {plan.parameters:,}; trainable {plan.trainable:,} ({share:.2f}%)",
    ]
    rows = [("", "device", "counted as")]
    rows += [(c.name, human(c.device), c.how) for c in plan.components]
    rows.append(("peak", human(plan.total), plan.peak_rule))
    if plan.cpu:
        rows.append(("CPU", human(plan.cpu), "offloaded (host memory per process)"))
    lines += _table(rows, right={1})
    if plan.budget is not None:
        needed = plan.needed
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  budget {human(plan.budget)}: {verdict} (needs {human(needed)}: the peak + 10% allocator slack "
                     f"+ 512 MiB runtime; {100 * needed / plan.budget:.0f}% of the budget)")
    for note in plan.notes:
        lines.append(f"  note: {note}")
    if plan.budget is not None and not plan.fits:
        if plan.advice:
            lines.append("  what saves the most, one setting at a time:")
            lines += _knob_rows(plan.advice, plan.budget)
        if plan.path_to_fit:
            fits = needed_with_reserve(plan.path_to_fit[-1].total) <= plan.budget
            lines.append("  to fit (least intrusive first):" if fits else "  even with all of these it does not fit:")
            for step, knob in enumerate(plan.path_to_fit, 1):
                lines.append(f"    {step}. {knob.label} -> peak {human(knob.total)}")
    return "\n".join(lines)


def _knob_rows(knobs: list[Knob], budget: int) -> list[str]:
    rows = [(f"- {k.label}", f"-{human(k.saving)}", f"-> {human(k.total)}",
             " ".join(w for w in ("fits" if k.fits_in <= budget else "", f"(CPU {human(k.cpu)})" if k.cpu else "") if w))
            for k in knobs]
    return ["  " + line for line in _table(rows, right={1, 2})]


def to_json(plan: MemoryEstimate) -> dict:
    """Every number in bytes, with the settings it was computed for."""
    data = {
        "parameters": plan.parameters,
        "trainable": plan.trainable,
        "method": plan.method,
        "stage": plan.stage,
        "processes": plan.processes,
        "settings": plan.settings,
        "per_device": {c.name: c.device for c in plan.components} | {"peak": plan.total},
        "how": {c.name: c.how for c in plan.components} | {"peak": plan.peak_rule},
        "cpu_offloaded": plan.cpu,
        "budget": plan.budget,
        "needed_with_reserve": plan.needed,
        "fits": plan.fits,
        "notes": plan.notes,
        "advice": [asdict(k) | {"fits": plan.budget is not None and k.fits_in <= plan.budget} for k in plan.advice],
        "path_to_fit": [asdict(k) for k in plan.path_to_fit],
    }
    return data
