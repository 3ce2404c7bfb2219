"""Accordions generated from the plugins: one per installed plugin of a kind, holding a widget for
each of its config keys, shown while that plugin is selected.

No plugin has UI code: a third-party method installed with pip gets its accordion from the keys its
spec declares (type, default, choices, doc), exactly like the built-in ones.
"""

from __future__ import annotations

import gradio as gr

from . import locales
from .args import plugin_accordion, plugin_element, visible_keys
from .fields import widget_spec
from .page import Page

#: Widgets per row inside an accordion.
PER_ROW = 4


def choice_label(entry) -> str:
    """How a plugin appears in its dropdown: its name, and why it cannot run when it cannot."""
    return entry.name if entry.status == "active" else f"{entry.name} ({entry.status.split(':')[0]})"


def plugin_choices(manager, kind: str) -> list[tuple[str, str]]:
    return [(choice_label(e), e.name) for e in manager.entries(kind)]


def _key_texts(key):
    def texts(lang: str) -> dict[str, str]:
        info = key.doc or ""
        if not key.effective:
            info = f"{info} ({locales.message('key_not_effective', lang)})".strip()
        return {"label": key.name, "info": info}

    return texts


def _accordion_texts(kind: str, entry):
    def texts(lang: str) -> dict[str, str]:
        return {"label": locales.message("plugin_accordion", lang, kind=locales.message(f"kind_{kind}", lang), name=entry.name)}

    return texts


def _about_texts(entry):
    def texts(lang: str) -> dict[str, str]:
        about = locales.message("plugin_about", lang, description=entry.spec.description, provider=entry.provider,
                                status=entry.status)
        if not visible_keys(entry.spec):
            about += "\n\n" + locales.message("plugin_no_keys", lang)
        return {"label": about}

    return texts


def build_widget(page: Page, elem_id: str, key):
    spec = widget_spec(key)
    texts = _key_texts(key)
    if spec.kind == "checkbox":
        return page.make_generated(elem_id, gr.Checkbox, texts, value=spec.value)
    if spec.kind == "dropdown":
        return page.make_generated(elem_id, gr.Dropdown, texts, choices=list(spec.choices), value=spec.value)
    if spec.kind == "number":
        return page.make_generated(elem_id, gr.Number, texts, value=spec.value, precision=0 if spec.integer else None)
    return page.make_generated(elem_id, gr.Textbox, texts, value=spec.value, lines=1)


def build_plugin_accordions(page: Page, manager, kind: str, selected: str | None) -> dict[str, gr.Accordion]:
    """One accordion per plugin of ``kind``; only ``selected``'s is visible. Returns name -> accordion."""
    accordions = {}
    for entry in manager.entries(kind):
        with page.make_generated(plugin_accordion(kind, entry.name), gr.Accordion, _accordion_texts(kind, entry),
                                 open=False, visible=entry.name == selected) as accordion:
            page.make_generated(f"{plugin_accordion(kind, entry.name)}.about", gr.Markdown, _about_texts(entry))
            keys = visible_keys(entry.spec)
            for start in range(0, len(keys), PER_ROW):
                with gr.Row():
                    for key in keys[start : start + PER_ROW]:
                        build_widget(page, plugin_element(kind, entry.name, key.name), key)
        accordions[entry.name] = accordion
    return accordions


def show_selected(accordions: dict[str, gr.Accordion]):
    """A change handler: make the selected plugin's accordion the visible one."""
    names = list(accordions)

    def handler(selected):
        return [gr.update(visible=name == selected) for name in names]

    return handler
