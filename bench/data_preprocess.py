"""Preprocessing speed: cold tokenisation throughput and the cache's warm load, against targets.

    python bench/data_preprocess.py [--rows 100000] [--workers 1] [--family llama3]

Writes alpaca rows to a temporary folder, then builds the SFT features twice with the tiny model's
tokenizer (the cache in a temporary TUNEFORGE_CACHE): the first run tokenises, the second loads the
cache. Prints rows/s and the speed-up, and exits 1 when a target is missed. The targets are for a
2-core CPU machine; the test suite only asserts the issue's 5x on 20k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

#: rows/s of cold tokenisation per worker (tiny llama3 tokenizer, short rows), warm-load seconds, speed-up.
TARGETS = {"cold_rows_per_s_per_worker": 3000, "warm_load_s": 0.5, "speedup": 20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--family", default="llama3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TUNEFORGE_CACHE"] = str(Path(tmp) / "cache")
        from tuneforge.data.dataset import build_datasets
        from tuneforge.plan import prepare
        from tuneforge.plugin_manager import PluginManager
        from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model
        from tuneforge.train.context import RunContext
        from tuneforge.train.model import load_tokenizer

        rows = [{"instruction": f"Question {i}: what is {i} plus {i % 7}?", "input": "", "output": f"It is {i + i % 7}."}
                for i in range(args.rows)]
        data = Path(tmp) / "rows.json"
        data.write_text(json.dumps(rows))
        model = cached_tiny_model(args.family, "tiny")
        template = {"llama3": "llama3", "qwen2": "qwen", "qwen3": "qwen3"}.get(args.family, "default")

        def build():
            overrides = [f"model_name_or_path={model}", f"template={template}", f"dataset={data}", "cutoff_len=128",
                         f"preprocessing_num_workers={args.workers}"]
            prepared = prepare(None, overrides, manager=PluginManager(autoload=False))
            ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
            load_tokenizer(ctx)
            start = time.perf_counter()
            splits = build_datasets(ctx, "supervised")
            return time.perf_counter() - start, len(splits.train)

        cold, count = build()
        warm, _ = build()

    results = {
        "cold_rows_per_s_per_worker": count / cold / max(1, args.workers),
        "warm_load_s": warm,
        "speedup": cold / warm,
    }
    print(f"\n{count} rows: cold {cold:.2f}s ({count / cold:,.0f} rows/s, {args.workers} worker(s)), "
          f"from cache {warm:.3f}s, speed-up {cold / warm:.0f}x")
    failed = False
    for name, target in TARGETS.items():
        value = results[name]
        ok = value <= target if name == "warm_load_s" else value >= target
        failed |= not ok
        print(f"  {name}: {value:,.3f} (target {'<=' if name == 'warm_load_s' else '>='} {target}) {'ok' if ok else 'MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
