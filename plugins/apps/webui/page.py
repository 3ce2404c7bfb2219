"""The page's components by element id, and their texts in the current language.

Every component the tabs build is registered here under an id such as ``train.learning_rate``.
Handlers read widget values by id (gradio hands them a ``{component: value}`` mapping), and the
language switch re-labels every registered component: fixed components from :mod:`.locales`,
generated plugin widgets from their config key (the key name is the label in every language, as it
is what the YAML says; the plugin's doc is the info text).
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from . import locales

#: Components that hold a value a handler reads (buttons, text blocks and layout do not).
_VALUE_TYPES = (gr.Textbox, gr.Number, gr.Dropdown, gr.Checkbox, gr.Slider, gr.Code, gr.Radio, gr.CheckboxGroup)


#: Components that take a label but no info text.
_NO_INFO = (gr.Tab, gr.Accordion, gr.Code, gr.HTML, gr.Chatbot, gr.LinePlot, gr.JSON, gr.Dataframe, gr.HighlightedText)


def texts_for(component, text: dict[str, str]) -> dict[str, Any]:
    """Constructor / update keyword arguments that show ``text`` on a component (or component class)."""
    cls = component if isinstance(component, type) else type(component)
    if issubclass(cls, (gr.Button, gr.Markdown)):
        return {"value": text["label"]}
    out = {"label": text["label"]}
    if issubclass(cls, gr.LinePlot):  # shown as the chart's title: gradio 6 cuts the legend off under a label
        out["title"] = text["label"]
    if text.get("info") and not issubclass(cls, _NO_INFO):
        out["info"] = text["info"]
    if text.get("placeholder") and issubclass(cls, gr.Textbox):
        out["placeholder"] = text["placeholder"]
    return out


class Page:
    """Registry of the page's components; ``lang`` is the language the page is built in."""

    def __init__(self, lang: str = "en"):
        self.lang = lang
        self.elements: dict[str, Any] = {}
        self._ids: dict[int, str] = {}
        #: element id -> function(lang) -> {"label":..., "info":...} for components not in the locales table
        self._generated_texts: dict[str, Callable[[str], dict[str, str]]] = {}
        #: components that only show messages (status lines): no text of their own to translate
        self.output_ids: set[str] = set()

    # --- building --------------------------------------------------------------------------------------

    def make(self, elem_id: str, cls, **kwargs):
        """Build ``cls`` with its texts in the page language from the locales table and register it."""
        kwargs = {**texts_for(cls, locales.text(elem_id, self.lang)), **kwargs}
        return self.add(elem_id, cls(elem_id=_dom_id(elem_id), **kwargs))

    def make_generated(self, elem_id: str, cls, texts: Callable[[str], dict[str, str]], **kwargs):
        """Build a component whose texts come from a plugin, not from the locales table."""
        self._generated_texts[elem_id] = texts
        kwargs = {**texts_for(cls, texts(self.lang)), **kwargs}
        return self.add(elem_id, cls(elem_id=_dom_id(elem_id), **kwargs))

    def make_output(self, elem_id: str, cls, **kwargs):
        """Build a component that only shows messages (a status line): it has no text of its own."""
        self.output_ids.add(elem_id)
        return self.add(elem_id, cls(elem_id=_dom_id(elem_id), **kwargs))

    def add(self, elem_id: str, component):
        if elem_id in self.elements:
            raise ValueError(f"element id {elem_id!r} is registered twice")
        self.elements[elem_id] = component
        self._ids[component._id] = elem_id
        return component

    def __getitem__(self, elem_id: str):
        return self.elements[elem_id]

    def __contains__(self, elem_id: str) -> bool:
        return elem_id in self.elements

    # --- handlers ----------------------------------------------------------------------------------

    def inputs(self) -> set:
        """Every value-holding component, for handlers that read the whole form."""
        return {c for c in self.elements.values() if isinstance(c, _VALUE_TYPES)}

    def values(self, data: dict) -> dict[str, Any]:
        """gradio's ``{component: value}`` as ``{element id: value}``."""
        return {self._ids[c._id]: v for c, v in data.items() if c._id in self._ids}

    def initial_values(self) -> dict[str, Any]:
        """``{element id: value}`` as the page opens (what a handler would receive untouched)."""
        return {i: c.value for i, c in self.elements.items() if isinstance(c, _VALUE_TYPES)}

    def ids_with(self, prefix: str) -> list[str]:
        return [i for i in self.elements if i.startswith(prefix)]

    # --- languages -----------------------------------------------------------------------------------

    def localized_ids(self) -> list[str]:
        """Ids whose texts change with the language: the locales table's and the generated ones."""
        return [i for i in self.elements if i in locales.LOCALES or i in self._generated_texts]

    def fixed_ids(self) -> list[str]:
        """Ids whose texts must come from the locales table (neither generated nor message-only)."""
        return [i for i in self.elements if i not in self._generated_texts and i not in self.output_ids]

    def texts(self, elem_id: str, lang: str) -> dict[str, str]:
        if elem_id in self._generated_texts:
            return self._generated_texts[elem_id](lang)
        return locales.text(elem_id, lang)

    def relabel(self, lang: str) -> list:
        """One update per :meth:`localized_ids` element, showing its texts in ``lang``."""
        return [gr.update(**texts_for(self.elements[i], self.texts(i, lang))) for i in self.localized_ids()]


def _dom_id(elem_id: str) -> str:
    """The HTML id of an element (browser tests find components by it)."""
    return "tf-" + elem_id.replace(".", "-").replace("_", "-")
