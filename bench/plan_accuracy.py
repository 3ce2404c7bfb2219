"""`tuneforge plan`'s estimate against the measured peak of real training steps, for a matrix of runs.

    python bench/plan_accuracy.py [--sizes tiny,small] [--methods full,lora,qlora] [--checkpointing on,off]
                                  [--shape tiny=2x256,small=1x128] [--steps 2] [--set bf16=true ...]

Each case plans the run (tuneforge.planner.plan_for: meta model, no weights) and then trains ``--steps``
steps of it through tuneforge's own loader, quantizer, method and the Hugging Face Trainer on synthetic
rows of exactly cutoff_len tokens (tuneforge.planner.measure). The measured peak is, on a GPU,
torch.cuda.max_memory_allocated(); on CPU, the bytes of the model's tensors when training starts plus
the highest point the CPU allocator's running total reaches during the steps (torch.profiler's memory
events). The cases run one after another in this process: the CPU measurement counts allocations and
frees inside its window only, so what earlier cases left behind does not enter it.

Columns (MiB): the estimate's weights, gradients, optimizer state, activations and peak; the measured
weights and peak; the estimate's error relative to the measured peak. tests/test_planner.py asserts
the error of the default matrix is within its TOLERANCE.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

METHODS = {
    "full": ["finetuning_type=full"],
    "lora": ["finetuning_type=lora"],
    "qlora": ["finetuning_type=lora", "quantization_bit=4", "quantization_method=bitsandbytes"],
}
MIB = 1024 * 1024


def _shapes(text: str) -> dict[str, tuple[int, int]]:
    out = {}
    for item in text.split(","):
        size, _, shape = item.partition("=")
        batch, _, length = shape.partition("x")
        out[size.strip()] = (int(batch), int(length))
    return out


def run_case(size: str, method: str, checkpointing: bool, batch: int, cutoff: int, steps: int,
             extra: list[str] = ()) -> dict:
    from tuneforge.plan import prepare
    from tuneforge.planner import plan_for
    from tuneforge.planner.measure import measure_training_peak
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    overrides = [f"model_name_or_path={cached_tiny_model('llama3', size)}", "stage=sft", "template=llama3",
                 *METHODS[method], f"cutoff_len={cutoff}", f"per_device_train_batch_size={batch}",
                 f"disable_gradient_checkpointing={not checkpointing}", *extra]
    prepared = prepare(None, overrides, manager=PluginManager(autoload=False))
    plan = plan_for(prepared, processes=1, use_device_memory=False)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's and the quantizer's messages
        measured = measure_training_peak(prepared, steps=steps)
    return {
        "case": f"{size} {method} {batch}x{cutoff} gc {'on' if checkpointing else 'off'}" + "".join(f" {e}" for e in extra),
        "weights": plan.weights.device, "gradients": plan.gradients.device, "optimizer": plan.optimizer.device,
        "activations": plan.activations.device, "estimate": plan.total, "measured_weights": measured.weights,
        "measured": measured.peak, "error": (plan.total - measured.peak) / measured.peak,
        "seconds": time.perf_counter() - started, "device": measured.device, "parameters": plan.parameters,
        "trainable": plan.trainable,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--checkpointing", default="on", help="on, off or on,off")
    parser.add_argument("--shape", default="tiny=2x256,small=1x128", help="micro batch x cutoff_len per size")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every case, e.g. bf16=true; repeatable")
    args = parser.parse_args()

    shapes = _shapes(args.shape)
    rows = []
    for size in args.sizes.split(","):
        for method in args.methods.split(","):
            for flag in args.checkpointing.split(","):
                batch, cutoff = shapes[size]
                row = run_case(size, method, flag == "on", batch, cutoff, args.steps, args.set)
                rows.append(row)
                print(f"done: {row['case']} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)

    headers = ("case", "weights", "grads", "optim", "activ", "estimate", "meas. weights", "measured", "error")
    table = [headers] + [(
        r["case"], *(f"{r[k] / MIB:.1f}" for k in ("weights", "gradients", "optimizer", "activations", "estimate",
                                                    "measured_weights", "measured")),
        f"{100 * r['error']:+.0f}%") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    print(f"estimate vs measured peak per device (MiB; {rows[0]['device'] if rows else '-'}; {args.steps} steps, AdamW)")
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    worst = max((abs(r["error"]) for r in rows), default=0)
    print(f"largest error: {100 * worst:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
