"""Throughput of an SFT run: non-pad tokens/s, samples/s and peak memory, for comparing frameworks.

    python bench/sft_throughput.py CONFIG [key=value ...] [--warmup-steps N] [--json PATH]

The config is an ordinary tuneforge / LLaMA-Factory training config; key=value overrides work as in
`tuneforge train`. The run trains exactly as `tuneforge train` would (same defaults, e.g. gradient
checkpointing on), except that by default it writes to a temporary output_dir, saves no checkpoints,
reports to no tracker and draws no plot (override any of these on the command line).

What is counted: every training micro-batch the trainer steps on (evaluation batches are not
counted). Tokens are non-pad tokens (the attention mask's ones); "target tokens" are those with a
label (what SFT learns). The first --warmup-steps optimizer steps (default 1) are excluded from the
rates, since they include one-off costs (allocation, kernel selection). Peak memory is the process's
peak resident set size on CPU and torch.cuda.max_memory_allocated() on a GPU.

The last line printed is a JSON object with every figure, for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--warmup-steps", type=int, default=1, help="optimizer steps left out of the rates")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this file")
    return parser.parse_args(argv)


class Counter:
    """Wraps the trainer's training_step (in the main process, whatever the dataloader workers do)
    and counts what each training micro-batch carries."""

    def __init__(self, training_step):
        self.training_step = training_step
        self.samples = self.tokens = self.targets = 0

    def __call__(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        self.samples += ids.shape[0]
        self.tokens += int(mask.sum()) if mask is not None else ids.numel()
        if "labels" in inputs:
            self.targets += int((inputs["labels"] != -100).sum())
        return self.training_step(model, inputs, *args, **kwargs)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from transformers import TrainerCallback

    from tuneforge import hookimpl
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.pipeline import run_training

    import torch

    cuda = torch.cuda.is_available()
    marks: list[tuple[int, float, int, int, int]] = []  # (step, time, samples, tokens, targets) after each step
    state: dict = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, targs, tstate, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            marks.append((tstate.global_step, time.perf_counter(), 0, 0, 0))

        def on_step_end(self, targs, tstate, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            c = state["counter"]
            marks.append((tstate.global_step, time.perf_counter(), c.samples, c.tokens, c.targets))

    bench = types.ModuleType("sft_throughput_bench")

    @hookimpl
    def tuneforge_trainer_created(ctx, trainer):
        state["counter"] = Counter(trainer.training_step)
        trainer.training_step = state["counter"]
        trainer.add_callback(Clock())
        state["ctx"] = ctx

    bench.tuneforge_trainer_created = tuneforge_trainer_created

    given = {o.split("=", 1)[0] for o in args.overrides}
    # values are read as YAML, like `tuneforge train` overrides: "no" must be quoted to stay a string
    defaults = {"save_strategy": '"no"', "report_to": "none", "plot_loss": "false", "overwrite_output_dir": "true"}
    overrides = [f"{k}={v}" for k, v in defaults.items() if k not in given]
    tmp = None
    if "output_dir" not in given:
        tmp = tempfile.TemporaryDirectory(prefix="tuneforge-bench-")
        overrides.append(f"output_dir={tmp.name}")
    manager = PluginManager(extra_plugins=[("sft-throughput-bench", bench)])
    prepared = prepare(args.config, [*args.overrides, *overrides], manager=manager)
    if prepared.config.stage != "sft":
        print(f"note: stage is {prepared.config.stage}, not sft; measuring it anyway")
    ctx = run_training(prepared)

    if len(marks) < args.warmup_steps + 2:
        print(f"error: the run made {len(marks) - 1} steps; need more than --warmup-steps {args.warmup_steps}", file=sys.stderr)
        return 2
    first, last = marks[args.warmup_steps], marks[-1]
    seconds = last[1] - first[1]
    samples, tokens, targets = (last[i] - first[i] for i in (2, 3, 4))
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        peak_kind = "cuda max allocated"
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        peak_kind = "peak RSS"
    config = ctx.config
    result = {
        "config": os.path.abspath(args.config),
        "overrides": args.overrides,
        "model": config.model_name_or_path,
        "method": ctx.plan.method.name,
        "stage": config.stage,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": "bf16" if config.get("bf16") else "fp16" if config.get("fp16") else "fp32",
        "gradient_checkpointing": bool(ctx.extras["trainer"].args.activation_checkpointing),
        "batch": f"{config.per_device_train_batch_size} x {config.gradient_accumulation_steps} accumulation",
        "cutoff_len": config.cutoff_len,
        "steps_measured": last[0] - first[0],
        "warmup_steps_excluded": args.warmup_steps,
        "seconds": round(seconds, 3),
        "samples": samples,
        "non_pad_tokens": tokens,
        "target_tokens": targets,
        "tokens_per_second": round(tokens / seconds, 2),
        "target_tokens_per_second": round(targets / seconds, 2),
        "samples_per_second": round(samples / seconds, 3),
        "peak_memory_bytes": peak,
        "peak_memory": f"{peak / 2**30:.3f} GiB ({peak_kind})",
        "trainable_parameters": ctx.extras.get("trainable_parameters"),
        "total_parameters": ctx.extras.get("total_parameters"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print()
    print(f"model            {result['model']} ({result['total_parameters']:,} parameters, method {result['method']})")
    print(f"device           {result['device']}, {result['dtype']}, gradient checkpointing "
          f"{'on' if result['gradient_checkpointing'] else 'off'}, batch {result['batch']}")
    print(f"measured         {result['steps_measured']} steps, {samples} samples, {tokens:,} non-pad tokens "
          f"in {seconds:.2f} s (first {args.warmup_steps} step(s) left out)")
    print(f"non-pad tokens/s {result['tokens_per_second']:,.1f}")
    print(f"samples/s        {result['samples_per_second']:,.3f}")
    print(f"peak memory      {result['peak_memory']}")
    print(json.dumps(result))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(result, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    from tuneforge.errors import TuneforgeError

    try:
        sys.exit(main())
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
