"""`tuneforge eval CONFIG`: a multiple-choice benchmark (MMLU / C-Eval / CMMLU layout) from local files.

Keys: ``task`` (``<folder>_<split>``, e.g. ``mmlu_test``), ``task_dir``, ``n_shot``, ``lang``
(``en``/``zh``), ``batch_size``, ``save_dir`` (results.json, results.log, scores.json), with the
model keys (model_name_or_path, adapter_name_or_path, template, ...). See docs/evaluation.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuneforge import CommandSpec, hookimpl


def register(parser):
    parser.add_argument("config", help="YAML config (model keys plus task, task_dir, n_shot, lang, batch_size, save_dir)")


def run(args) -> int:
    from tuneforge.plan import prepare

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin, require=("model_name_or_path", "task"))
    for warning in prepared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from tuneforge.plugins.apps.benchmark.benchmark import TaskFiles, evaluate, parse_task, save_results, score_table

    config = prepared.config
    # fail on a wrong path or a used save_dir before loading the model
    TaskFiles(config.task_dir, parse_task(config.task)[0]).mapping()
    if config.save_dir and (Path(config.save_dir) / "results.json").exists():
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(f"save_dir {config.save_dir} already holds results.json; choose another save_dir or remove it")
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    ctx = RunContext(config, prepared.plan, prepared.manager, training=False)
    load_model(ctx)
    results = evaluate(ctx, progress=lambda line: print(line, flush=True))
    print(f"\n{config.task} ({config.n_shot}-shot, {config.lang}) accuracy, %:")
    print(score_table(results))
    if config.save_dir:
        written = save_results(results, config.save_dir)
        print(f"results saved: {', '.join(str(p) for p in written)}")
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="eval", description="score a model on a multiple-choice benchmark (task, task_dir, n_shot, lang)",
                        register=register, run=run)]
