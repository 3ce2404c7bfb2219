"""`tuneforge plan CONFIG [key=value ...]`: estimate per-device memory of the training run; load no weights.

Exit status: 0 when the run fits the budget (or no budget is known), 1 when it does not, 2 for a
config error (the same errors as `tuneforge check`), so ``tuneforge plan c.yaml --memory 24GiB && tuneforge
train c.yaml`` starts only what fits.
"""

from __future__ import annotations

import argparse


def _size(text: str) -> int:
    from ..planner import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def register(sub, name):
    p = sub.add_parser(
        name,
        help="estimate per-device memory (weights, gradients, optimizer, activations) and what to change if it does not fit",
        description="Estimate the memory a training run needs on each device, from the model's config.json "
                    "(no weights are loaded) and the run's settings; see docs/planner.md for the formulas.",
    )
    p.add_argument("config", help="YAML config (LLaMA-Factory's keys)")
    p.add_argument("--memory", type=_size, metavar="SIZE",
                   help="memory of one device, e.g. 24GiB or 80GB (default: the visible GPU's, else none)")
    p.add_argument("--processes", type=_positive, metavar="N",
                   help="processes (devices) to plan for (default: WORLD_SIZE, or NPROC_PER_NODE x NNODES, "
                        "or the visible GPUs, as `tuneforge train` would launch)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bytes) instead of a table")
    p.add_argument("--measure", action="store_true",
                   help="also load the model and train 2 steps on synthetic rows of cutoff_len tokens, "
                        "and print the measured peak beside the estimate (writes nothing)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import json

    from ..plan import prepare
    from ..planner import plan_for
    from ..planner.report import human, render_text, to_json

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin, reads_data=False)
    plan = plan_for(prepared, processes=args.processes, budget=args.memory)
    data = to_json(plan) if args.json else None
    if not args.json:
        print(render_text(plan))
        for warning in prepared.warnings:
            print(f"warning: {warning}")
    if args.measure:
        import contextlib
        import sys

        from ..planner.measure import measure_training_peak

        # the trainer's and the quantizer's messages must not mix into the JSON
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            measured = measure_training_peak(prepared)
        error = (plan.total - measured.peak) / max(measured.peak, 1)
        if data is not None:
            data["measured"] = {"peak": measured.peak, "weights": measured.weights, "device": measured.device,
                                "steps": measured.steps, "relative_error": round(error, 4)}
        else:
            print(f"measured ({measured.steps} steps on {measured.device}): peak {human(measured.peak)}, "
                  f"weights {human(measured.weights)}; the estimate is {100 * error:+.0f}%")
    if data is not None:
        print(json.dumps(data, indent=2, default=str))
    return 1 if plan.fits is False else 0
