"""The Train tab: stage, data (with preview and the data doctor), hyper-parameters, the generated
plugin accordions, and the run controls with progress, log and live loss curve."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
import yaml

from tuneforge.plugins import DEFAULT_SELECTIONS

from .. import locales
from ..args import COMPUTE_TYPES, PLUGIN_SELECTORS, REPORTERS, SCHEDULERS, ArgumentError, command_line, timestamp, to_yaml
from ..data_preview import TRAINED, dataset_names, preview_rows, run_doctor
from ..generated import build_plugin_accordions, plugin_choices, show_selected
from ..runner import RunnerBusy, smooth

CONFIG_NAME = "webui_train.yaml"


def default_compute_type() -> str:
    """bf16 where a GPU is likely (as LLaMA-Factory defaults), fp32 on a CPU-only machine."""
    import shutil

    return "bf16" if shutil.which("nvidia-smi") else "fp32"


def loss_frame(losses: list[tuple[int, float]], lang: str) -> pd.DataFrame | None:
    """Raw and smoothed loss, one row per (step, curve), for the line plot; None before the first point
    (gradio 6 draws no line into a plot that first received an empty frame, so the plot starts as None)."""
    if not losses:
        return None
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    raw, smoothed = locales.message("curve_raw", lang), locales.message("curve_smoothed", lang)
    return pd.DataFrame({"step": steps * 2, "loss": values + smooth(values), "curve": [raw] * len(steps) + [smoothed] * len(steps)})


def build(ui) -> None:
    page, manager = ui.page, ui.manager
    with gr.Row():
        page.make("train.stage", gr.Dropdown, choices=plugin_choices(manager, "stage"), value=DEFAULT_SELECTIONS["stage"], scale=1)
        page.make("train.dataset_dir", gr.Textbox, value=ui.dataset_dir, scale=1)
        page.make("train.dataset", gr.Dropdown, choices=dataset_names(ui.dataset_dir), value=[], multiselect=True,
                  allow_custom_value=True, scale=4)
        page.make("train.preview_data", gr.Button, scale=1)
    with page.make("train.data_box", gr.Accordion, open=False) as data_box:
        page.make("train.data_rows", gr.Dataframe, interactive=False, wrap=True, max_height=300)
        with gr.Row():
            page.make("train.check_data", gr.Button, size="md")
        page.make("train.data_example", gr.HighlightedText, combine_adjacent=True, show_legend=True,
                  color_map={TRAINED: "green"})
        page.make("train.data_report", gr.Textbox, lines=8, max_lines=20, interactive=False)
    ui.train_data_box = data_box

    with gr.Row():
        page.make("train.learning_rate", gr.Textbox, value="5e-5")
        page.make("train.num_train_epochs", gr.Textbox, value="3.0")
        page.make("train.max_grad_norm", gr.Textbox, value="1.0")
        page.make("train.max_samples", gr.Textbox, value="100000")
        page.make("train.compute_type", gr.Dropdown, choices=list(COMPUTE_TYPES), value=default_compute_type())
    with gr.Row():
        page.make("train.cutoff_len", gr.Slider, minimum=4, maximum=131072, value=2048, step=1)
        page.make("train.batch_size", gr.Slider, minimum=1, maximum=1024, value=2, step=1)
        page.make("train.gradient_accumulation_steps", gr.Slider, minimum=1, maximum=1024, value=8, step=1)
        page.make("train.val_size", gr.Slider, minimum=0, maximum=1, value=0, step=0.001)
        page.make("train.lr_scheduler_type", gr.Dropdown, choices=list(SCHEDULERS), value="cosine")

    with page.make("train.extra_box", gr.Accordion, open=False):
        with gr.Row():
            page.make("train.logging_steps", gr.Slider, minimum=1, maximum=1000, value=5, step=1)
            page.make("train.save_steps", gr.Slider, minimum=10, maximum=5000, value=100, step=10)
            page.make("train.warmup_steps", gr.Slider, minimum=0, maximum=5000, value=0, step=1)
            page.make("train.neftune_alpha", gr.Slider, minimum=0, maximum=10, value=0, step=0.1)
        with gr.Row():
            page.make("train.packing", gr.Checkbox, value=False)
            page.make("train.neat_packing", gr.Checkbox, value=False)
            page.make("train.train_on_prompt", gr.Checkbox, value=False)
            page.make("train.mask_history", gr.Checkbox, value=False)
            page.make("train.report_to", gr.Dropdown, choices=list(REPORTERS), value=["none"], multiselect=True)
        with gr.Row():
            page.make("train.replace_placeholders", gr.Textbox, value="", scale=1)
            page.make("train.extra_args", gr.Textbox, value="", lines=3, scale=2)

    ui.accordions["method"] = build_plugin_accordions(page, manager, "method", DEFAULT_SELECTIONS["finetuning_type"])
    ui.accordions["stage"] = build_plugin_accordions(page, manager, "stage", DEFAULT_SELECTIONS["stage"])
    ui.accordions["quantizer"] = build_plugin_accordions(page, manager, "quantizer", None)

    with gr.Row():
        page.make("train.preview_btn", gr.Button)
        page.make("train.save_btn", gr.Button)
        page.make("train.load_btn", gr.Button)
        page.make("train.start_btn", gr.Button, variant="primary")
        page.make("train.abort_btn", gr.Button, variant="stop", interactive=False)
    with gr.Row():
        page.make("train.output_dir", gr.Textbox, value=f"train_{timestamp()}", scale=2)
        page.make("train.config_path", gr.Textbox, value=f"{timestamp()}.yaml", scale=2)
        page.make("train.device_count", gr.Number, value=1, precision=0, minimum=1, scale=1)
    page.make_output("train.status", gr.Markdown, value="")
    page.make_output("train.progress", gr.HTML, value="")
    with gr.Row():
        with gr.Column(scale=1):
            page.make("train.log", gr.Textbox, lines=18, max_lines=18, autoscroll=True, interactive=False)
        with gr.Column(scale=1):
            page.make("train.loss", gr.LinePlot, value=None, x="step", y="loss", color="curve", show_label=False,
                      height=380, x_title="step", y_title="loss")
    page.make("train.preview", gr.Code, language="yaml", visible=False, interactive=False)


def progress_html(status, lang: str) -> str:
    """A progress bar with steps, elapsed time and ETA, from trainer_log.jsonl's last line."""
    progress = status.progress
    if progress is None:
        if not status.running:
            return ""
        return f"<div class='tf-progress-text'>{locales.message('progress_loading', lang)}</div>"
    text = locales.message("progress_text", lang, current=progress.current_steps, total=progress.total_steps,
                           percentage=progress.percentage, elapsed=progress.elapsed_time,
                           remaining=progress.remaining_time or "?")
    width = max(0.0, min(100.0, progress.percentage))
    return ("<div style='width:100%;background:var(--neutral-200,#e5e7eb);border-radius:6px;height:14px;overflow:hidden'>"
            f"<div id='tf-progress-bar' style='width:{width:.1f}%;background:var(--color-accent,#f97316);height:100%'></div></div>"
            f"<div class='tf-progress-text' style='margin-top:4px'>{text}</div>")


def status_text(status, lang: str) -> str:
    """One line (or the error) saying what the current job is doing or how it ended."""
    if status.state == "idle":
        return ""
    where = str(status.workdir)
    if status.state == "running":
        key = "job_aborting" if status.aborting else "job_running"
        return locales.message(key, lang, kind=locales.message(f"job_{status.kind}", lang), where=where)
    if status.state == "finished":
        return locales.message("job_finished", lang, kind=locales.message(f"job_{status.kind}", lang), where=where)
    if status.state == "aborted":
        checkpoints = sorted(Path(where).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        saved = str(checkpoints[-1]) if checkpoints else "-"
        return locales.message("job_aborted", lang, kind=locales.message(f"job_{status.kind}", lang), checkpoint=saved)
    return locales.message("job_failed", lang, kind=locales.message(f"job_{status.kind}", lang), code=status.returncode,
                           error=status.error)


def wire(ui) -> None:
    page = ui.page
    lang = page["top.lang"]

    for kind in ("method", "stage", "quantizer"):
        accordions = ui.accordions[kind]
        page[PLUGIN_SELECTORS[kind]].change(show_selected(accordions), page[PLUGIN_SELECTORS[kind]], list(accordions.values()),
                                            queue=False)

    def refresh_datasets(dataset_dir, selected):
        names = dataset_names(dataset_dir)
        return gr.update(choices=names, value=[s for s in (selected or []) if s in names or Path(s).suffix])

    page["train.dataset_dir"].change(refresh_datasets, [page["train.dataset_dir"], page["train.dataset"]], page["train.dataset"], queue=False)
    page["train.dataset"].focus(refresh_datasets, [page["train.dataset_dir"], page["train.dataset"]], page["train.dataset"], queue=False)

    def preview_data(dataset_dir, datasets, lang):
        """The first rows of the first chosen dataset, read from its file (no tokenizer)."""
        if not datasets:
            return gr.update(open=True), gr.update(value=None), locales.message("no_dataset", lang)
        try:
            headers, rows, total = preview_rows(dataset_dir, datasets[0])
        except (ValueError, OSError) as exc:
            return gr.update(open=True), gr.update(value=None), str(exc)
        shown = locales.message("data_rows_shown", lang, shown=len(rows), total="?" if total is None else total, name=datasets[0])
        return gr.update(open=True), gr.update(value=pd.DataFrame(rows, columns=headers)), shown

    page["train.preview_data"].click(preview_data, [page["train.dataset_dir"], page["train.dataset"], lang],
                                     [ui.train_data_box, page["train.data_rows"], page["train.data_report"]])

    def check_data(data):
        values = page.values(data)
        current = values.get("top.lang", "en")
        try:
            config = ui.args.train_config(values)
        except ArgumentError as exc:
            return None, str(exc)
        config.pop("output_dir", None)
        code, report, example = run_doctor(config)
        return example or None, report or locales.message("doctor_no_output", current, code=code)

    page["train.check_data"].click(check_data, page.inputs(), [page["train.data_example"], page["train.data_report"]])

    def preview_command(data):
        values = page.values(data)
        current = values.get("top.lang", "en")
        try:
            config = ui.args.train_config(values)
        except ArgumentError as exc:
            return gr.update(visible=True, value=f"# {exc}")
        path = Path(config["output_dir"]) / CONFIG_NAME
        command = command_line("train", path, int(values.get("train.device_count") or 1))
        return gr.update(visible=True, value=ui.preview(config, command, current))

    page["train.preview_btn"].click(preview_command, page.inputs(), page["train.preview"])

    def save_arguments(data):
        values = page.values(data)
        current = values.get("top.lang", "en")
        try:
            config = ui.args.train_config(values)
        except ArgumentError as exc:
            return str(exc)
        path = ui.config_file(values.get("train.config_path"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_yaml(config), encoding="utf-8")
        return locales.message("args_saved", current, path=path)

    page["train.save_btn"].click(save_arguments, page.inputs(), page["train.status"])

    def load_arguments(data):
        values = page.values(data)
        current = values.get("top.lang", "en")
        path = ui.config_file(values.get("train.config_path"))
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            return {page["train.status"]: locales.message("args_load_failed", current, path=path, error=exc)}
        if not isinstance(config, dict):
            return {page["train.status"]: locales.message("args_load_failed", current, path=path, error="not a mapping")}
        updates = ui.widget_updates(config, values)
        updates[page["train.status"]] = locales.message("args_loaded", current, path=path)
        return updates

    page["train.load_btn"].click(load_arguments, page.inputs(), page.inputs() | {page["train.status"]})

    def start(data):
        values = page.values(data)
        current = values.get("top.lang", "en")
        try:
            config = ui.args.train_config(values)
        except ArgumentError as exc:
            return str(exc), gr.update()
        problems = ui.problems(config)
        if problems:
            return locales.message("config_invalid", current, problems=problems), gr.update()
        output_dir = Path(config["output_dir"])
        if (output_dir / "train_results.json").exists() and not config.get("overwrite_output_dir"):
            return locales.message("output_dir_used", current, path=output_dir), gr.update()
        device_count = int(values.get("train.device_count") or 1)
        try:
            ui.runner.start("train", "train", config, output_dir, config_name=CONFIG_NAME, device_count=device_count,
                            command=command_line("train", output_dir / CONFIG_NAME, device_count))
        except RunnerBusy as exc:
            return locales.message("runner_busy", current, detail=exc), gr.update()
        return locales.message("job_started", current, where=output_dir), gr.update(interactive=True)

    page["train.start_btn"].click(start, page.inputs(), [page["train.status"], page["train.abort_btn"]])

    def abort(lang):
        if ui.runner.abort():
            return locales.message("abort_sent", lang)
        return locales.message("nothing_running", lang)

    page["train.abort_btn"].click(abort, lang, page["train.status"], queue=False)


def tick_outputs(ui) -> list:
    page = ui.page
    return [page["train.status"], page["train.progress"], page["train.log"], page["train.loss"], page["train.start_btn"],
            page["train.abort_btn"]]


def tick(ui, status, lang: str, seen: dict) -> list:
    """Updates for :func:`tick_outputs` from the runner's status; what has not changed since this
    page's last tick is skipped (so a message such as "arguments saved" stays, and the plot does not
    redraw every second)."""
    running = status.running
    if status.kind != "train":
        return [gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.update(interactive=not running), gr.update(interactive=False)]
    shown = {
        "status": (status.state, status.aborting, str(status.workdir), lang),
        "progress": progress_html(status, lang),
        "log": status.log,
        "loss": (str(status.workdir), len(status.losses), lang),
    }
    changed = {name: seen.get(f"train.{name}") != value for name, value in shown.items()}
    seen.update({f"train.{name}": value for name, value in shown.items()})
    return [
        status_text(status, lang) if changed["status"] else gr.skip(),
        shown["progress"] if changed["progress"] else gr.skip(),
        status.log if changed["log"] else gr.skip(),
        loss_frame(status.losses, lang) if changed["loss"] else gr.skip(),
        gr.update(interactive=not running),
        gr.update(interactive=running),
    ]
