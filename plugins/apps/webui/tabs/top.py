"""The top bar: language, model, method, checkpoint, and the advanced model settings."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .. import locales, registry
from ..args import AUTO, BOOSTERS, list_checkpoints
from ..fields import NONE_CHOICE
from ..generated import plugin_choices


def quantization_bits(manager) -> list[str]:
    """The widths the installed quantizers support, for the quantization-bit dropdown."""
    bits = sorted({b for e in manager.entries("quantizer") for b in e.spec.bits}, reverse=True)
    return [NONE_CHOICE, *(str(b) for b in bits)]


def build(ui) -> None:
    page, manager = ui.page, ui.manager
    from tuneforge.plugins import DEFAULT_SELECTIONS

    with gr.Row():
        page.make("top.lang", gr.Dropdown, choices=[(name, code) for code, name in locales.LANGUAGES.items()],
                  value=page.lang, scale=1)
        page.make("top.model_name", gr.Dropdown, choices=registry.model_names(manager), value=registry.CUSTOM, scale=2)
        page.make("top.model_path", gr.Textbox, value=ui.model_path, scale=3)
    with gr.Row():
        page.make("top.finetuning_type", gr.Dropdown, choices=plugin_choices(manager, "method"),
                  value=DEFAULT_SELECTIONS["finetuning_type"], scale=1)
        page.make("top.checkpoint_path", gr.Dropdown, choices=[], value=[], multiselect=True,
                  allow_custom_value=True, scale=5)
        page.make("top.refresh", gr.Button, scale=1, size="md")
    with page.make("top.advanced", gr.Accordion, open=False):
        with gr.Row():
            page.make("top.quantization_bit", gr.Dropdown, choices=quantization_bits(manager), value=NONE_CHOICE)
            page.make("top.quantization_method", gr.Dropdown, choices=plugin_choices(manager, "quantizer"),
                      value=DEFAULT_SELECTIONS["quantization_method"])
            page.make("top.template", gr.Dropdown, choices=[AUTO, *(e.name for e in manager.entries("template")
                                                                         if e.status == "active" and e.name != AUTO)], value=AUTO)
            rope = ui.args.keys["rope_scaling"].choices
            page.make("top.rope_scaling", gr.Dropdown, choices=[NONE_CHOICE, *(c for c in rope if c)], value=NONE_CHOICE)
            page.make("top.booster", gr.Dropdown, choices=list(BOOSTERS), value="auto")


def wire(ui) -> None:
    page = ui.page

    def fill_from_registry(name):
        """A known model name fills in its hub id and template; Custom leaves the path alone."""
        known = registry.known_model(ui.manager, name)
        if known is None:
            return gr.update(), gr.update()
        return known.hub_id, known.template

    page["top.model_name"].change(fill_from_registry, page["top.model_name"], [page["top.model_path"], page["top.template"]])

    def refresh_checkpoints(data):
        values = page.values(data)
        choices = list_checkpoints(ui.args.method_root(values))
        # keep what still exists: a checkpoint of this model and method, or a folder typed in by hand
        kept = [c for c in (values.get("top.checkpoint_path") or []) if c.strip() and (c in choices or Path(c).is_dir())]
        return gr.update(choices=choices, value=kept)

    inputs = {page["top.model_name"], page["top.model_path"], page["top.finetuning_type"], page["top.checkpoint_path"]}
    for elem_id in ("top.model_name", "top.model_path", "top.finetuning_type"):
        page[elem_id].change(refresh_checkpoints, inputs, page["top.checkpoint_path"], queue=False)
    page["top.refresh"].click(refresh_checkpoints, inputs, page["top.checkpoint_path"], queue=False)
    page["top.checkpoint_path"].focus(refresh_checkpoints, inputs, page["top.checkpoint_path"], queue=False)
