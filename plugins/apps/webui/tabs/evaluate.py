"""The Evaluate & Predict tab: predictions with BLEU/ROUGE on an eval dataset (`tuneforge train` with
do_predict + predict_with_generate), and multiple-choice benchmarks (`tuneforge eval`)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from .. import locales
from ..args import ArgumentError, command_line, timestamp
from ..data_preview import dataset_names
from ..runner import RunnerBusy
from .train import status_text

PREDICT_CONFIG = "webui_predict.yaml"
BENCH_CONFIG = "webui_eval.yaml"


def benchmark_tasks(task_dir: str | Path) -> list[str]:
    """``<folder>_<split>`` for every benchmark folder (one with mapping.json) and its splits but dev."""
    root = Path(task_dir or "")
    if not root.is_dir():
        return []
    tasks = []
    for folder in sorted(p for p in root.iterdir() if (p / "mapping.json").is_file()):
        base = folder / "data" if (folder / "data").is_dir() else folder
        splits = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "dev")
        tasks += [f"{folder.name}_{split}" for split in splits]
    return tasks


def build(ui) -> None:
    page = ui.page
    with gr.Row():
        page.make("eval.dataset_dir", gr.Textbox, value=ui.dataset_dir, scale=1)
        page.make("eval.dataset", gr.Dropdown, choices=dataset_names(ui.dataset_dir), value=[], multiselect=True,
                  allow_custom_value=True, scale=4)
    with gr.Row():
        page.make("eval.cutoff_len", gr.Slider, minimum=4, maximum=131072, value=1024, step=1)
        page.make("eval.max_samples", gr.Textbox, value="100000")
        page.make("eval.batch_size", gr.Slider, minimum=1, maximum=1024, value=2, step=1)
    with gr.Row():
        page.make("eval.max_new_tokens", gr.Slider, minimum=8, maximum=4096, value=512, step=1)
        page.make("eval.top_p", gr.Slider, minimum=0.01, maximum=1.0, value=0.7, step=0.01)
        page.make("eval.temperature", gr.Slider, minimum=0.01, maximum=1.5, value=0.95, step=0.01)
        page.make("eval.output_dir", gr.Textbox, value=f"eval_{timestamp()}")
    with gr.Row():
        page.make("eval.preview_btn", gr.Button)
        page.make("eval.start_btn", gr.Button, variant="primary")
    with page.make("bench.box", gr.Accordion, open=False):
        task_dir = str(Path(ui.dataset_dir) / "evaluation")
        tasks = benchmark_tasks(task_dir)
        with gr.Row():
            page.make("bench.task_dir", gr.Textbox, value=task_dir)
            page.make("bench.task", gr.Dropdown, choices=tasks, value=tasks[0] if tasks else None, allow_custom_value=True)
            page.make("bench.n_shot", gr.Slider, minimum=0, maximum=10, value=5, step=1)
            page.make("bench.lang", gr.Dropdown, choices=list(ui.args.keys["lang"].choices), value="en")
            page.make("bench.batch_size", gr.Slider, minimum=1, maximum=64, value=4, step=1)
            page.make("bench.save_dir", gr.Textbox, value=f"bench_{timestamp()}")
        page.make("bench.start_btn", gr.Button, variant="primary")
    page.make("eval.abort_btn", gr.Button, variant="stop", interactive=False)
    page.make_output("eval.status", gr.Markdown, value="")
    page.make("eval.preview", gr.Code, language="yaml", visible=False, interactive=False)
    with gr.Row():
        page.make("eval.log", gr.Textbox, lines=14, max_lines=14, autoscroll=True, interactive=False, scale=1)
        page.make("eval.results", gr.JSON, value=None, scale=1)


def wire(ui) -> None:
    page = ui.page

    def refresh_datasets(dataset_dir, selected):
        names = dataset_names(dataset_dir)
        return gr.update(choices=names, value=[s for s in (selected or []) if s in names or Path(s).suffix])

    page["eval.dataset_dir"].change(refresh_datasets, [page["eval.dataset_dir"], page["eval.dataset"]], page["eval.dataset"], queue=False)
    page["eval.dataset"].focus(refresh_datasets, [page["eval.dataset_dir"], page["eval.dataset"]], page["eval.dataset"], queue=False)
    page["bench.task_dir"].change(lambda d: gr.update(choices=benchmark_tasks(d)), page["bench.task_dir"], page["bench.task"], queue=False)

    def preview(data):
        values = page.values(data)
        lang = values.get("top.lang", "en")
        try:
            config = ui.args.predict_config(values)
        except ArgumentError as exc:
            return gr.update(visible=True, value=f"# {exc}")
        command = command_line("train", Path(config["output_dir"]) / PREDICT_CONFIG)
        return gr.update(visible=True, value=ui.preview(config, command, lang))

    page["eval.preview_btn"].click(preview, page.inputs(), page["eval.preview"])

    def start(kind: str):
        def handler(data):
            values = page.values(data)
            lang = values.get("top.lang", "en")
            try:
                config = ui.args.predict_config(values) if kind == "predict" else ui.args.benchmark_config(values)
            except ArgumentError as exc:
                return str(exc), gr.update(), None
            problems = ui.problems(config, require=("model_name_or_path", "task") if kind == "eval" else ("model_name_or_path",))
            if problems:
                return locales.message("config_invalid", lang, problems=problems), gr.update(), None
            workdir = Path(config["output_dir"] if kind == "predict" else config["save_dir"])
            if kind == "eval" and (workdir / "results.json").exists():
                return locales.message("output_dir_used", lang, path=workdir), gr.update(), None
            verb, name = ("train", PREDICT_CONFIG) if kind == "predict" else ("eval", BENCH_CONFIG)
            try:
                ui.runner.start(kind, verb, config, workdir, config_name=name, command=command_line(verb, workdir / name))
            except RunnerBusy as exc:
                return locales.message("runner_busy", lang, detail=exc), gr.update(), None
            return locales.message("job_started", lang, where=workdir), gr.update(interactive=True), None

        return handler

    outputs = [page["eval.status"], page["eval.abort_btn"], page["eval.results"]]
    page["eval.start_btn"].click(start("predict"), page.inputs(), outputs)
    page["bench.start_btn"].click(start("eval"), page.inputs(), outputs)

    def abort(lang):
        return locales.message("abort_sent" if ui.runner.abort() else "nothing_running", lang)

    page["eval.abort_btn"].click(abort, page["top.lang"], page["eval.status"], queue=False)


def read_results(status) -> dict | None:
    """predict_results.json (BLEU/ROUGE) or scores.json (benchmark accuracy) of a finished job."""
    if status.workdir is None:
        return None
    name = "predict_results.json" if status.kind == "predict" else "scores.json"
    path = Path(status.workdir) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tick_outputs(ui) -> list:
    page = ui.page
    return [page["eval.status"], page["eval.log"], page["eval.results"], page["eval.start_btn"], page["bench.start_btn"],
            page["eval.abort_btn"]]


def tick(ui, status, lang: str, seen: dict) -> list:
    running = status.running
    buttons = [gr.update(interactive=not running), gr.update(interactive=not running)]
    if status.kind not in ("predict", "eval"):
        return [gr.skip(), gr.skip(), gr.skip(), *buttons, gr.update(interactive=False)]
    shown = {"status": (status.state, status.aborting, str(status.workdir), lang), "log": status.log}
    changed = {name: seen.get(f"eval.{name}") != value for name, value in shown.items()}
    seen.update({f"eval.{name}": value for name, value in shown.items()})
    results = read_results(status) if status.state == "finished" and changed["status"] else gr.skip()
    return [status_text(status, lang) if changed["status"] else gr.skip(), status.log if changed["log"] else gr.skip(),
            results, *buttons, gr.update(interactive=running)]
