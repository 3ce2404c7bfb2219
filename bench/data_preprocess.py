"""Preprocessing speed: cold SFT tokenisation rows/s, the cache's warm load, and LLaMA-Factory's rows/s.

    python bench/data_preprocess.py [--rows 50000] [--alpaca PATH/alpaca_en_demo.json] [--workers 1]
                                    [--family llama3] [--cutoff-len 1024] [--repeats 1]
                                    [--against PATH/python-of-a-llamafactory-venv] [--rayon-threads N]

Writes the rows (``--alpaca``: LLaMA-Factory's alpaca demo rows repeated to ``--rows``, each
instruction numbered so no two rows are the same; without it: short synthetic questions) and a
dataset_info.json to a temporary folder, then builds the SFT features of that dataset with the tiny
model's tokenizer and its template, each run a fresh process with a fresh cache (cold: files to
features, the cache written). With ``--against`` the same dataset, tokenizer, template and cutoff_len
go through LLaMA-Factory's ``get_dataset`` in its own venv (a fresh datasets cache each run). Runs are
interleaved (tuneforge, LF, tuneforge, LF, ...) and medians printed: rows/s and the ratio. Then a
second tuneforge build in one process shows the warm load from the cache.

``--rayon-threads 1`` pins the tokenizers library to one thread (RAYON_NUM_THREADS) for both
frameworks: "one process, one core". Without it the batched encode uses every core the machine gives it.
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

TEMPLATES = {"llama3": "llama3", "qwen2": "qwen", "qwen3": "qwen3", "mistral": "mistral", "gemma": "gemma"}

LF_CHILD = r"""
import json, sys, time
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_template_and_fix_tokenizer, get_dataset
args = json.loads(sys.argv[1])
model_args, data_args, training_args, _, _ = get_train_args(args)
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
start = time.perf_counter()
data = get_dataset(template, model_args, data_args, training_args, "sft", **module)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"rows": len(data["train_dataset"]), "seconds": seconds}))
"""


def write_data(folder: Path, rows: int, alpaca: str | None) -> None:
    if alpaca:
        base = json.loads(Path(alpaca).read_text())
        data = [{**base[i % len(base)], "instruction": f"{i}. {base[i % len(base)]['instruction']}"} for i in range(rows)]
    else:
        data = [{"instruction": f"Question {i}: what is {i} plus {i % 7}?", "input": "", "output": f"It is {i + i % 7}."}
                for i in range(rows)]
    (folder / "rows.json").write_text(json.dumps(data))
    (folder / "dataset_info.json").write_text(json.dumps({"bench_rows": {"file_name": "rows.json"}}))


def tuneforge_child(args) -> None:
    """One cold build (and with --warm a second, from the cache), in this process; prints RESULT json."""
    from tuneforge.data.dataset import build_datasets
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_tokenizer

    import datasets  # noqa: F401  -- imported before the clock starts, as LLaMA-Factory's get_dataset import does

    def build():
        overrides = [f"model_name_or_path={args.model}", f"template={TEMPLATES.get(args.family, 'default')}",
                     "dataset=bench_rows", f"dataset_dir={args.data}", f"cutoff_len={args.cutoff_len}",
                     f"preprocessing_num_workers={args.workers}"]
        prepared = prepare(None, overrides, manager=PluginManager(autoload=False))
        ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
        load_tokenizer(ctx)
        start = time.perf_counter()
        splits = build_datasets(ctx, "supervised")
        return time.perf_counter() - start, len(splits.train)

    cold, rows = build()
    result = {"rows": rows, "seconds": cold}
    if args.warm:
        result["warm_seconds"] = build()[0]
    print("RESULT " + json.dumps(result))


def run(command: list[str], env: dict) -> dict:
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"error: {command[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--alpaca", help="LLaMA-Factory's alpaca_en_demo.json (default: synthetic short rows)")
    parser.add_argument("--workers", type=int, default=1, help="preprocessing_num_workers (both frameworks)")
    parser.add_argument("--family", default="llama3", help="tiny-model family whose tokenizer and template are used")
    parser.add_argument("--cutoff-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--against", help="the python of a venv with llamafactory installed")
    parser.add_argument("--rayon-threads", type=int, help="RAYON_NUM_THREADS for the tokenizers library")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tuneforge_child(args)
        return 0

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    model = str(cached_tiny_model(args.family, "tiny"))
    results: dict[str, list[dict]] = {"tuneforge": [], "LLaMA-Factory": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        write_data(data, args.rows, args.alpaca)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        if args.rayon_threads:
            env["RAYON_NUM_THREADS"] = str(args.rayon_threads)
        for repeat in range(args.repeats):
            run_env = {**env, "TUNEFORGE_CACHE": str(Path(tmp) / f"cache-{repeat}")}
            ours = run([sys.executable, __file__, "--child", "--data", str(data), "--model", model, "--family", args.family,
                        "--cutoff-len", str(args.cutoff_len), "--workers", str(args.workers)]
                       + (["--warm"] if repeat == 0 else []), run_env)
            results["tuneforge"].append(ours)
            print(f"run {repeat + 1}: tuneforge {ours['rows'] / ours['seconds']:,.0f} rows/s ({ours['seconds']:.1f}s)", flush=True)
            if args.against:
                lf_args = {"stage": "sft", "do_train": True, "model_name_or_path": model, "dataset": "bench_rows",
                           "dataset_dir": str(data), "template": TEMPLATES.get(args.family, "default"),
                           "cutoff_len": args.cutoff_len, "finetuning_type": "lora", "overwrite_cache": True,
                           "output_dir": str(Path(tmp) / "lf-out"), "report_to": "none",
                           "preprocessing_num_workers": args.workers if args.workers > 1 else None}
                lf_env = {**env, "HF_DATASETS_CACHE": str(Path(tmp) / f"lf-cache-{repeat}")}
                theirs = run([args.against, "-c", LF_CHILD, json.dumps(lf_args)], lf_env)
                results["LLaMA-Factory"].append(theirs)
                print(f"run {repeat + 1}: LLaMA-Factory {theirs['rows'] / theirs['seconds']:,.0f} rows/s "
                      f"({theirs['seconds']:.1f}s)", flush=True)

    def rate(name: str) -> float:
        return statistics.median(r["rows"] / r["seconds"] for r in results[name])

    ours = results["tuneforge"]
    print(f"\n{args.rows} rows ({'alpaca demo' if args.alpaca else 'synthetic'}), {args.family} tokenizer, "
          f"cutoff_len {args.cutoff_len}, {args.workers} worker(s), rayon threads {args.rayon_threads or 'default'}, "
          f"{args.repeats} repeat(s), medians:")
    print(f"  tuneforge cold: {rate('tuneforge'):,.0f} rows/s ({ours[0]['rows']} rows kept); "
          f"warm load from the cache: {ours[0]['warm_seconds']:.3f}s")
    if results["LLaMA-Factory"]:
        theirs = rate("LLaMA-Factory")
        print(f"  LLaMA-Factory cold: {theirs:,.0f} rows/s ({results['LLaMA-Factory'][0]['rows']} rows kept)")
        print(f"  ratio tuneforge / LLaMA-Factory: {rate('tuneforge') / theirs:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
