"""One training config, run by tuneforge (one or more variants) and optionally by LLaMA-Factory, interleaved.

    python bench/compare.py CONFIG [key=value ...] [--variant NAME:key=value,...] [--against PATH/llamafactory-cli]
                            [--repeats N] [--threads T] [--warmup-steps N] [--json PATH]

Every run is a fresh process with the same thread count (OMP/MKL threads and torch.set_num_threads)
and the same overrides (a temporary output_dir, no checkpoint within the run, no tracker, no plot). Runs are
interleaved (A B C A B C ...) so a machine shared with others slows every framework alike; the
figures reported are medians over the repeats.

Both frameworks are measured by the same code: the child process patches transformers' Trainer
before the framework imports it, wraps ``training_step`` to count what each micro-batch carries, and
times optimizer steps, leaving out the first --warmup-steps. Non-pad tokens are the attention mask's
ones (all ids in a padding-free batch, which has no pad); target tokens are labels other than -100.
Peak memory is the child's peak RSS (os.wait4) on CPU, torch.cuda.max_memory_allocated() on a GPU.
Step memory is what the training steps add above the memory held when training begins: the peak RSS
of the steps (VmHWM, reset through /proc/self/clear_refs at train begin) minus the RSS then (on a GPU,
the allocator's peak minus what was allocated then); weights, libraries and data are left out.
Final loss is the last logged training loss (set logging_steps: 1 to compare step by step; --json keeps
every logged loss, grad norm and learning rate of each run).

With --against, LLaMA-Factory's runs use the interpreter of that llamafactory-cli (its venv) and its
own ``run_exp``; ratios are then tuneforge variant / LLaMA-Factory, otherwise variant / first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
RUN_DEFAULTS = {"save_steps": "1000000", "report_to": "none", "plot_loss": "false", "overwrite_output_dir": "true"}


# --- the child: runs one framework once, measuring ------------------------------------------------------------


def child(framework: str, out: str, warmup: int, threads: int, argv: list[str]) -> None:
    if framework == "tuneforge":  # what `tuneforge train` does between validating the config and loading torch
        from tuneforge.plan import prepare
        from tuneforge.train.host_memory import before_torch

        before_torch(prepare(argv[0], argv[1:]).config)
    import torch

    torch.set_num_threads(threads)
    import transformers

    cuda = torch.cuda.is_available()
    marks: list[tuple] = []  # (step, time, samples, tokens, targets)
    counts = {"samples": 0, "tokens": 0, "targets": 0}
    seen: dict = {}

    def rss_status(field: str) -> int | None:  # VmRSS / VmHWM of this process, bytes (Linux)
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                seen["train_start"] = torch.cuda.memory_allocated()
            else:
                try:  # reset the peak RSS (VmHWM) so the training steps' own peak can be read at the end
                    Path("/proc/self/clear_refs").write_text("5")
                except OSError:
                    pass
                seen["train_start"] = rss_status("VmRSS")
            marks.append((state.global_step, time.perf_counter(), 0, 0, 0))

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            marks.append((state.global_step, time.perf_counter(), counts["samples"], counts["tokens"], counts["targets"]))

    train = transformers.Trainer.train

    def measured_train(self, *args, **kwargs):
        step = self.training_step

        def counted(model, inputs, *a, **k):
            ids, mask, positions = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("position_ids")
            if mask is None and positions is not None:  # padding-free: one row per restart at 0
                counts["samples"] += int((positions == 0).sum())
            else:
                counts["samples"] += ids.shape[0]
            counts["tokens"] += int(mask.sum()) if mask is not None and mask.dim() == 2 else ids.numel()
            if "labels" in inputs:
                counts["targets"] += int((inputs["labels"] != -100).sum())
            # what each micro-batch holds (non-pad ids and labels), to find where two runs part
            keep = mask.bool() if mask is not None and mask.dim() == 2 else torch.ones_like(ids, dtype=torch.bool)
            seen.setdefault("batches", []).append(
                [hash(tuple(ids[keep].tolist())), hash(tuple(inputs["labels"][keep].tolist())) if "labels" in inputs else None])
            return step(model, inputs, *a, **k)

        self.training_step = counted
        self.add_callback(Clock())
        seen["trainer"] = self
        return train(self, *args, **kwargs)

    transformers.Trainer.train = measured_train
    sys.argv = [framework, *argv]
    if framework == "llamafactory":
        from llamafactory.train.tuner import run_exp

        run_exp()
    else:
        from tuneforge.cli.main import main

        code = main(["train", *argv])
        if code:
            sys.exit(code)
    trainer = seen["trainer"]
    history = trainer.state.log_history
    losses = [r["loss"] for r in history if "loss" in r]
    train_loss = next((r["train_loss"] for r in reversed(history) if "train_loss" in r), None)
    result = {
        "marks": marks, "warmup": warmup, "final_loss": losses[-1] if losses else None, "train_loss": train_loss,
        "losses": losses, "grad_norms": [r["grad_norm"] for r in history if r.get("grad_norm") is not None],
        "learning_rates": [r["learning_rate"] for r in history if "learning_rate" in r],
        "micro_batches": seen.get("batches", []),
        # what the model does, not what the arguments say (LLaMA-Factory enables it on the model itself)
        "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) is True for m in trainer.model.modules()),
        "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None,
        # the training steps' peak (RSS high-water since train began; on a GPU the allocator's) and what
        # the steps add above the memory held when training began (weights, optimizer set-up, data)
        "train_peak": torch.cuda.max_memory_allocated() if cuda else rss_status("VmHWM"),
        "train_start": seen.get("train_start"),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    Path(out).write_text(json.dumps(result))


# --- the parent: interleaves the runs and reports -------------------------------------------------------------


def run_once(python: str, framework: str, config: str, overrides: list[str], threads: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        given = {o.split("=", 1)[0] for o in overrides}
        extra = [f"{k}={v}" for k, v in RUN_DEFAULTS.items() if k not in given]
        if "output_dir" not in given:
            extra.append(f"output_dir={tmp}/out")
        out = f"{tmp}/result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "TOKENIZERS_PARALLELISM": "false", "DISABLE_VERSION_CHECK": "1"}
        cmd = [python, str(HERE), "--child", framework, "--child-out", out, "--warmup-steps", str(warmup),
               "--threads", str(threads), config, *overrides, *extra]
        log = open(f"{tmp}/log.txt", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        log.close()
        if status != 0 or not Path(out).is_file():
            tail = Path(f"{tmp}/log.txt").read_text()[-3000:]
            raise SystemExit(f"{framework} run failed ({' '.join(cmd)}):\n{tail}")
        result = json.loads(Path(out).read_text())
    marks, warmup = result.pop("marks"), result["warmup"]
    if len(marks) < warmup + 2:
        raise SystemExit(f"{framework}: only {len(marks) - 1} steps; set max_steps above --warmup-steps {warmup}")
    first, last = marks[warmup], marks[-1]
    seconds = last[1] - first[1]
    samples, tokens, targets = (last[i] - first[i] for i in (2, 3, 4))
    peak = result["cuda_peak"] if result["cuda_peak"] is not None else usage.ru_maxrss * 1024
    return {**result, "seconds": seconds, "samples": samples, "tokens": tokens, "targets": targets,
            "tokens_per_second": tokens / seconds, "target_tokens_per_second": targets / seconds,
            "samples_per_second": samples / seconds, "peak_memory_bytes": peak,
            "step_memory_bytes": (result["train_peak"] - result["train_start"])
            if result.get("train_peak") is not None and result.get("train_start") is not None else None}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition(":")
    return name, [s for s in settings.split(",") if s]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value, for every run")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:key=value,... a tuneforge run with these extra settings (repeatable)")
    parser.add_argument("--against", help="PATH/llamafactory-cli: also run LLaMA-Factory with its venv's python")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.child_out, args.warmup_steps, args.threads, [args.config, *args.overrides])
        return 0

    runs: list[tuple[str, str, str, list[str]]] = []  # (label, python, framework, overrides)
    for text in args.variant or ["tuneforge:"]:
        name, settings = parse_variant(text)
        runs.append((name, sys.executable, "tuneforge", [*args.overrides, *settings]))
    if args.against:
        cli = Path(args.against)
        python = cli.parent / "python"
        if not python.exists():
            raise SystemExit(f"--against {cli}: no python beside it ({python}); give the llamafactory-cli of a venv")
        runs.append(("llamafactory", str(python), "llamafactory", list(args.overrides)))
    results: dict[str, list[dict]] = {label: [] for label, *_ in runs}
    for repeat in range(args.repeats):
        for label, python, framework, overrides in runs:
            print(f"[{repeat + 1}/{args.repeats}] {label} ...", flush=True)
            results[label].append(run_once(python, framework, args.config, overrides, args.threads, args.warmup_steps))

    def median(label, key):
        values = [r[key] for r in results[label] if r[key] is not None]
        return statistics.median(values) if values else None

    base = "llamafactory" if args.against else runs[0][0]
    keys = ("tokens_per_second", "target_tokens_per_second", "samples_per_second", "peak_memory_bytes",
            "step_memory_bytes", "final_loss")
    summary = {label: {k: median(label, k) for k in keys} for label in results}
    for label in results:
        summary[label]["gradient_checkpointing"] = results[label][0]["gradient_checkpointing"]
    first = results[runs[0][0]][0]
    print(f"\nconfig {args.config} {' '.join(args.overrides)}")
    print(f"device {first['device']}, {args.threads} thread(s), {args.repeats} interleaved repeat(s), medians; "
          f"first {args.warmup_steps} step(s) left out; ratios against {base}")
    header = f"{'run':<18}{'tokens/s':>11}{'target tok/s':>14}{'samples/s':>11}{'peak MiB':>10}{'step MiB':>10}" \
             f"{'final loss':>12}{'GC':>4}{'tok/s x':>9}{'mem x':>7}{'step x':>8}"
    print(header)
    for label, s in summary.items():
        ratio = s["tokens_per_second"] / summary[base]["tokens_per_second"]
        mem = s["peak_memory_bytes"] / summary[base]["peak_memory_bytes"]
        s["tokens_per_second_ratio"], s["peak_memory_ratio"] = ratio, mem
        step, base_step = s["step_memory_bytes"], summary[base]["step_memory_bytes"]
        s["step_memory_ratio"] = step / base_step if step and base_step else None
        loss = f"{s['final_loss']:.6f}" if s["final_loss"] is not None else "-"
        step_text = f"{step / 2**20:>10.0f}" if step is not None else f"{'-':>10}"
        step_ratio = f"{s['step_memory_ratio']:>8.2f}" if s["step_memory_ratio"] else f"{'-':>8}"
        print(f"{label:<18}{s['tokens_per_second']:>11.1f}{s['target_tokens_per_second']:>14.1f}{s['samples_per_second']:>11.3f}"
              f"{s['peak_memory_bytes'] / 2**20:>10.0f}{step_text}{loss:>12}{'on' if s['gradient_checkpointing'] else 'off':>4}"
              f"{ratio:>9.2f}{mem:>7.2f}{step_ratio}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
