"""The Chat tab: load / unload the model of the top bar (with its checkpoint) through an inference
engine plugin, then chat with a system prompt, tools, sampling sliders and streamed replies.

An image (a vision-language model) goes with the next message: the engine gets it as the message's
``images`` with an ``<image>`` placeholder, as `tuneforge chat --image` sends it; the conversation
the engine sees (images of earlier turns included) is kept in a state beside the chatbot, which only
shows it. A text-only model refuses the image with its error in the conversation."""

from __future__ import annotations

import gradio as gr

from tuneforge.plugins import DEFAULT_SELECTIONS

from .. import locales
from ..args import ArgumentError
from ..chat_session import short_error
from ..generated import build_plugin_accordions, plugin_choices, show_selected


def build(ui) -> None:
    page, manager = ui.page, ui.manager
    with gr.Row():
        page.make("chat.infer_backend", gr.Dropdown, choices=plugin_choices(manager, "engine"),
                  value=DEFAULT_SELECTIONS["infer_backend"])
        dtype = ui.args.keys["infer_dtype"]
        page.make("chat.infer_dtype", gr.Dropdown, choices=list(dtype.choices), value=dtype.default)
    ui.accordions["engine"] = build_plugin_accordions(page, manager, "engine", DEFAULT_SELECTIONS["infer_backend"])
    with gr.Row():
        page.make("chat.load_btn", gr.Button, variant="primary")
        page.make("chat.unload_btn", gr.Button)
    page.make_output("chat.info", gr.Markdown, value="")
    with gr.Row():
        with gr.Column(scale=3):
            page.make("chat.chatbot", gr.Chatbot, height=420, buttons=["copy"])
            page.make("chat.query", gr.Textbox, lines=2)
            page.make("chat.image", gr.Image, type="filepath", sources=["upload", "clipboard"], height=160)
            with gr.Row():
                page.make("chat.submit", gr.Button, variant="primary")
                page.make("chat.clear", gr.Button)
        with gr.Column(scale=1):
            page.make("chat.system", gr.Textbox, lines=2, value="")
            page.make("chat.tools", gr.Textbox, lines=3, value="")
            page.make("chat.max_new_tokens", gr.Slider, minimum=8, maximum=4096, value=512, step=1)
            page.make("chat.top_p", gr.Slider, minimum=0.01, maximum=1.0, value=0.7, step=0.01)
            page.make("chat.temperature", gr.Slider, minimum=0.0, maximum=1.5, value=0.95, step=0.01)
            page.make("chat.skip_special_tokens", gr.Checkbox, value=True)


def wire(ui) -> None:
    page = ui.page
    # The conversation as the engine gets it (user turns keep their images); the chatbot only shows it.
    conversation = gr.State([])
    accordions = ui.accordions["engine"]
    page["chat.infer_backend"].change(show_selected(accordions), page["chat.infer_backend"], list(accordions.values()),
                                      queue=False)

    def load(data):
        values = page.values(data)
        lang = values.get("top.lang", "en")
        try:
            config = ui.args.chat_config(values)
        except ArgumentError as exc:
            return str(exc)
        yield locales.message("chat_loading", lang, model=config.get("adapter_name_or_path") or config["model_name_or_path"])
        try:
            loaded = ui.chat.load(config)
        except Exception as exc:  # a model that cannot load must leave the page working: say why
            yield locales.message("chat_load_failed", lang, error=short_error(exc))
            return
        yield locales.message("chat_loaded", lang, **{k: v or "-" for k, v in loaded.items()})

    page["chat.load_btn"].click(load, page.inputs(), page["chat.info"])

    def unload(lang):
        ui.chat.unload()
        return locales.message("chat_unloaded", lang), [], []

    page["chat.unload_btn"].click(unload, page["top.lang"], [page["chat.info"], page["chat.chatbot"], conversation])

    def respond(history, query, image, turns, system, tools, max_new_tokens, top_p, temperature, skip_special, lang):
        shown = [{"role": m["role"], "content": m["content"]} for m in (history or [])]
        turns = list(turns or [])
        if not ui.chat.loaded:
            gr.Warning(locales.message("chat_not_loaded", lang))
            yield shown, query, image, turns
            return
        if not (query or "").strip():
            yield shown, query, image, turns
            return
        message = {"role": "user", "content": query}
        if image:
            message = {"role": "user", "content": "<image>" + query, "images": [image]}
            shown.append({"role": "user", "content": {"path": image}})
        turns.append(message)
        shown += [{"role": "user", "content": query}, {"role": "assistant", "content": ""}]
        yield shown, "", None, turns
        settings = {"max_new_tokens": int(max_new_tokens), "top_p": float(top_p), "skip_special_tokens": bool(skip_special)}
        if float(temperature) > 0:
            settings["temperature"] = float(temperature)
        else:
            settings["do_sample"] = False
        reply = ""
        try:
            for piece in ui.chat.stream(turns, system=system, tools=tools, **settings):
                reply += piece
                shown[-1]["content"] = reply
                yield shown, "", None, turns
            turns.append({"role": "assistant", "content": reply})
        except Exception as exc:  # bad tools JSON, a text-only model given an image: show it, keep the page
            turns.pop()  # the failed turn is not part of the conversation the model continues
            shown[-1]["content"] = reply + f"\n\n[{locales.message('chat_error', lang)}: {short_error(exc)}]"
        yield shown, "", None, turns

    inputs = [page["chat.chatbot"], page["chat.query"], page["chat.image"], conversation, page["chat.system"],
              page["chat.tools"], page["chat.max_new_tokens"], page["chat.top_p"], page["chat.temperature"],
              page["chat.skip_special_tokens"], page["top.lang"]]
    outputs = [page["chat.chatbot"], page["chat.query"], page["chat.image"], conversation]
    page["chat.submit"].click(respond, inputs, outputs)
    page["chat.query"].submit(respond, inputs, outputs)
    page["chat.clear"].click(lambda: ([], []), None, [page["chat.chatbot"], conversation], queue=False)
