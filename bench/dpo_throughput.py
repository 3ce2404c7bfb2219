"""Throughput of a DPO LoRA run beside an SFT LoRA run on the same conversations: non-pad tokens/s and
peak memory, per model size.

    python bench/dpo_throughput.py [--sizes tiny,small] [--family llama3] [--steps 12] [--warmup-steps 2]
                                   [--pairs data/dpo_en_demo.json] [--json PATH] [key=value ...]

For each size, the cached tiny benchmark model (`tuneforge.plugins.apps.tiny_model.builder`, built offline) is trained twice,
each in its own process (so peak memory is that run's alone) through bench/sft_throughput.py, which
trains exactly as `tuneforge train` does and counts what every training micro-batch carries:

- sft: the prompts of ``--pairs`` with their *chosen* replies, batch 2 x B rows;
- dpo: the same prompts with chosen and rejected replies, B pairs, i.e. the same 2 x B rows per step
  (pref_loss sigmoid, reference = the policy with its adapter disabled).

So both runs step over the same number of rows of similar length; dpo does one extra forward (the
reference, without gradients) per step. "tokens/s" counts the non-pad tokens of the rows the policy
trains on (for dpo: chosen and rejected); peak memory is the process's peak RSS on CPU and
torch.cuda.max_memory_allocated() on a GPU. key=value overrides go to both runs (e.g. bf16=true,
cutoff_len=1024, per_device_train_batch_size=8 sets B).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFT_THROUGHPUT = Path(__file__).resolve().with_name("sft_throughput.py")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="key=value, applied to both runs")
    parser.add_argument("--sizes", default="tiny,small", help="tiny-model sizes, comma list")
    parser.add_argument("--family", default="llama3", help="tiny-model family (its template is used)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the rates")
    parser.add_argument("--pairs", default=str(REPO / "data" / "dpo_en_demo.json"),
                        help="preference pairs in LLaMA-Factory's sharegpt ranking layout")
    parser.add_argument("--json", dest="json_path", help="also write every figure to this file")
    return parser.parse_args(argv)


def write_datasets(pairs_file: Path, folder: Path) -> None:
    """``pairs`` (the dpo rows, as given) and ``chosen`` (sharegpt conversations ending in the chosen reply)."""
    pairs = json.loads(pairs_file.read_text(encoding="utf-8"))
    chosen = [{"conversations": row["conversations"] + [row["chosen"]]} for row in pairs]
    (folder / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    (folder / "chosen.json").write_text(json.dumps(chosen), encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({
        "pairs": {"file_name": "pairs.json", "ranking": True, "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "chosen": {"file_name": "chosen.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}},
    }), encoding="utf-8")


def measure(config: Path, overrides: list[str], warmup_steps: int) -> dict:
    """One sft_throughput.py run in its own process; its figures (the JSON object on its last line)."""
    command = [sys.executable, str(SFT_THROUGHPUT), str(config), *overrides, "--warmup-steps", str(warmup_steps)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"error: {' '.join(command)} exited with {result.returncode}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    import yaml

    # values are read as YAML, as `tuneforge train` reads overrides
    given = {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in args.overrides}
    batch = int(given.pop("per_device_train_batch_size", 4))
    rows = []
    with tempfile.TemporaryDirectory(prefix="tuneforge-dpo-bench-") as tmp:
        folder = Path(tmp)
        write_datasets(Path(args.pairs), folder)
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            model = cached_tiny_model(args.family, size)
            common = {
                "model_name_or_path": str(model), "template": args.family, "finetuning_type": "lora",
                "dataset_dir": str(folder), "cutoff_len": 512, "max_steps": args.steps, "learning_rate": 1e-4,
                "logging_steps": args.steps, "disable_tqdm": True, "dataloader_drop_last": True, **given,
            }
            runs = {
                "sft": {**common, "stage": "sft", "dataset": "chosen", "per_device_train_batch_size": 2 * batch},
                "dpo": {**common, "stage": "dpo", "dataset": "pairs", "per_device_train_batch_size": batch,
                        "pref_loss": "sigmoid"},
            }
            for stage, values in runs.items():
                config = folder / f"{size}-{stage}.yaml"
                config.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
                print(f"measuring {stage} on {args.family}-{size} ...", flush=True)
                figures = measure(config, [], args.warmup_steps)
                rows.append({"size": size, "stage": stage, **figures})

    print()
    print(f"{'size':<6} {'stage':<5} {'params':>12} {'rows/step':>9} {'non-pad tok/s':>14} {'samples/s':>10} "
          f"{'peak memory':>30}")
    for row in rows:
        per_step = row["samples"] // max(row["steps_measured"], 1)
        print(f"{row['size']:<6} {row['stage']:<5} {row['total_parameters']:>12,} {per_step:>9} "
              f"{row['tokens_per_second']:>14,.1f} {row['samples_per_second']:>10.2f} {row['peak_memory']:>30}")
    by_size: dict[str, dict] = {}
    for row in rows:
        by_size.setdefault(row["size"], {})[row["stage"]] = row
    for size, stages in by_size.items():
        if {"sft", "dpo"} <= set(stages):
            ratio = stages["dpo"]["tokens_per_second"] / stages["sft"]["tokens_per_second"]
            memory = stages["dpo"]["peak_memory_bytes"] / stages["sft"]["peak_memory_bytes"]
            print(f"{size}: dpo runs at {ratio:.2f}x sft's tokens/s with {memory:.2f}x its peak memory")
    print(json.dumps(rows))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
