"""The Export tab: `tuneforge export` of the top bar's model and checkpoint, with shard size, export
quantization and its calibration data, device, folder and hub id; shows the verification report
(weights differ from the base, merged == base + adapter, chat template kept)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from .. import locales
from ..args import ArgumentError, command_line
from ..fields import NONE_CHOICE
from ..runner import RunnerBusy
from .train import status_text

CONFIG_NAME = "webui_export.yaml"
REPORT = "export_verification.json"


def build(ui) -> None:
    page = ui.page
    keys = ui.args.keys
    bits = sorted({b for e in ui.manager.entries("quantizer") if e.spec.export_quantize for b in e.spec.bits}, reverse=True)
    with gr.Row():
        page.make("export.export_size", gr.Slider, minimum=1, maximum=100, value=keys["export_size"].default, step=1)
        page.make("export.export_quantization_bit", gr.Dropdown, choices=[NONE_CHOICE, *map(str, bits)], value=NONE_CHOICE)
        page.make("export.export_quantization_dataset", gr.Textbox, value="")
        page.make("export.export_device", gr.Dropdown, choices=list(keys["export_device"].choices),
                  value=keys["export_device"].default)
        page.make("export.export_legacy_format", gr.Checkbox, value=False)
    with gr.Row():
        page.make("export.export_dir", gr.Textbox, value="", scale=2)
        page.make("export.export_hub_model_id", gr.Textbox, value="", scale=2)
        page.make("export.preview_btn", gr.Button, scale=1)
        page.make("export.start_btn", gr.Button, variant="primary", scale=1)
    page.make_output("export.status", gr.Markdown, value="")
    page.make("export.preview", gr.Code, language="yaml", visible=False, interactive=False)
    page.make_output("export.summary", gr.Markdown, value="")
    with gr.Row():
        page.make("export.log", gr.Textbox, lines=14, max_lines=14, autoscroll=True, interactive=False, scale=1)
        page.make("export.report", gr.JSON, value=None, scale=1)


def wire(ui) -> None:
    page = ui.page

    def config_for(values):
        config = ui.args.export_config(values)
        if not config.get("export_dir"):
            raise ArgumentError(locales.message("export_dir_missing", values.get("top.lang", "en")))
        return config

    def preview(data):
        values = page.values(data)
        lang = values.get("top.lang", "en")
        try:
            config = config_for(values)
        except ArgumentError as exc:
            return gr.update(visible=True, value=f"# {exc}")
        command = command_line("export", Path(config["export_dir"]) / CONFIG_NAME)
        return gr.update(visible=True, value=ui.preview(config, command, lang))

    page["export.preview_btn"].click(preview, page.inputs(), page["export.preview"])

    def start(data):
        values = page.values(data)
        lang = values.get("top.lang", "en")
        try:
            config = config_for(values)
        except ArgumentError as exc:
            return str(exc), None
        problems = ui.problems(config)
        if problems:
            return locales.message("config_invalid", lang, problems=problems), None
        export_dir = Path(config["export_dir"])
        (export_dir / REPORT).unlink(missing_ok=True)  # an earlier export's report must not pass for this one's
        try:
            ui.runner.start("export", "export", config, export_dir, config_name=CONFIG_NAME,
                            command=command_line("export", export_dir / CONFIG_NAME))
        except RunnerBusy as exc:
            return locales.message("runner_busy", lang, detail=exc), None
        return locales.message("job_started", lang, where=export_dir), None

    page["export.start_btn"].click(start, page.inputs(), [page["export.status"], page["export.report"]])
    page["export.start_btn"].click(lambda: "", None, page["export.summary"], queue=False)


def verification_summary(report: dict | None, lang: str) -> str:
    """The verification report in a few sentences: what was compared and whether it held."""
    if not report:
        return ""
    lines = []
    weights = report.get("weights")
    if weights:
        lines.append(locales.message("verify_weights", lang, changed=weights.get("changed"), compared=weights.get("compared"),
                                     diff=float(weights.get("max_abs_diff") or 0.0)))
    if "logits_vs_adapter_max_abs_diff" in report:
        lines.append(locales.message("verify_reload", lang, diff=float(report["logits_vs_adapter_max_abs_diff"]),
                                     tolerance=float(report.get("tolerance") or 0.0), agree=report.get("top_token_agreement", "?")))
    elif report.get("reload") == "failed":
        lines.append(locales.message("verify_reload_failed", lang))
    if "chat_template_matches_training" in report:
        key = "verify_template_ok" if report["chat_template_matches_training"] else "verify_template_differs"
        lines.append(locales.message(key, lang))
    failures = report.get("failures") or []
    head = locales.message("verify_failed", lang) if failures else locales.message("verify_passed", lang)
    return "\n".join([f"**{head}**", *(f"- {line}" for line in lines), *(f"- ✗ {f}" for f in failures)])


def read_report(status) -> dict | None:
    try:
        return json.loads((Path(status.workdir) / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None


def tick_outputs(ui) -> list:
    page = ui.page
    return [page["export.status"], page["export.log"], page["export.summary"], page["export.report"], page["export.start_btn"]]


def tick(ui, status, lang: str, seen: dict) -> list:
    button = gr.update(interactive=not status.running)
    if status.kind != "export":
        return [gr.skip(), gr.skip(), gr.skip(), gr.skip(), button]
    shown = {"status": (status.state, str(status.workdir), lang), "log": status.log}
    changed = {name: seen.get(f"export.{name}") != value for name, value in shown.items()}
    seen.update({f"export.{name}": value for name, value in shown.items()})
    # the report is written even when a verification check fails: show it then too
    if status.state != "running" and changed["status"]:
        report = read_report(status)
        summary = verification_summary(report, lang)
    else:
        report = summary = gr.skip()
    return [status_text(status, lang) if changed["status"] else gr.skip(), status.log if changed["log"] else gr.skip(),
            summary, report, button]
