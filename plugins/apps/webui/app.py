"""Builds the web UI: the top bar and the Train, Evaluate & Predict, Chat and Export tabs.

:class:`WebUI` holds what every browser tab of one server shares: the plugin manager (the dropdowns
and generated accordions list what it found, third-party plugins included), the job runner, the
chat model and the page's components. :func:`create_app` returns the gradio Blocks;
`tuneforge webui` launches it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

from tuneforge.errors import TuneforgeError
from tuneforge.plugin_manager import PluginManager
from . import locales
from .args import ArgumentError, Context
from .chat_session import ChatSession
from .page import Page
from .runner import Runner
from .tabs import chat, evaluate, export, top, train

#: How often an open page asks the runner for progress, log and loss, in seconds.
POLL_SECONDS = 1.0
#: Keeps the log boxes scrolled to their last line unless the reader scrolled up (gradio 6's
#: ``autoscroll`` does not follow a value set by a timer).
FOLLOW_LOGS_JS = """() => {
  document.querySelectorAll('#tf-train-log textarea, #tf-eval-log textarea, #tf-export-log textarea').forEach(box => {
    if (!box.dataset.tfFollow) {
      box.dataset.tfFollow = 'yes';
      box.addEventListener('scroll', () => {
        box.dataset.tfFollow = box.scrollHeight - box.scrollTop - box.clientHeight < 40 ? 'yes' : 'no';
      });
    }
    if (box.dataset.tfFollow === 'yes') box.scrollTop = box.scrollHeight;
  });
}"""


class WebUI:
    """The server-wide state of the web UI and the helpers the tabs share."""

    def __init__(self, manager: PluginManager | None = None, *, save_root: str | Path = "saves", dataset_dir: str = "data",
                 model_path: str = "", lang: str = "en", runner: Runner | None = None):
        if lang not in locales.LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; choose one of {', '.join(locales.LANGUAGES)}")
        self.manager = manager or PluginManager()
        self.args = Context(self.manager, Path(save_root))
        self.runner = runner or Runner()
        self.chat = ChatSession(self.manager)
        self.page = Page(lang)
        self.dataset_dir = dataset_dir
        self.model_path = model_path
        #: plugin kind -> {plugin name: its accordion}
        self.accordions: dict[str, dict[str, Any]] = {}
        self.train_data_box = None

    # --- shared helpers ------------------------------------------------------------------------------

    def problems(self, config: dict, require: tuple[str, ...] = ("model_name_or_path",)) -> str:
        """Every problem `tuneforge check` finds in ``config`` (empty when it would run); loads no model."""
        from tuneforge.plan import prepare

        with tempfile.TemporaryDirectory(prefix="tuneforge-webui-check-") as folder:
            path = Path(folder) / "config.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
            try:
                prepare(path, manager=self.manager, require=require, confine_data=True)  # no data outside dataset_dir
            except TuneforgeError as exc:
                return str(exc).replace(str(path), "config")
        return ""

    def check(self, config: dict, lang: str) -> str:
        """One line for the command preview: `tuneforge check` passes, or its first problem."""
        problems = self.problems(config, require=("model_name_or_path",))
        if not problems:
            return locales.message("check_ok", lang)
        return locales.message("check_failed", lang) + " " + " | ".join(line.strip() for line in problems.splitlines()[1:])

    def preview(self, config: dict, command: str, lang: str) -> str:
        """The command preview every tab shows: the command, whether `tuneforge check` passes, the YAML."""
        from .args import to_yaml

        return f"# {locales.message('preview_header', lang)}\n# {command}\n# {self.check(config, lang)}\n" + to_yaml(config)

    def config_file(self, name: str | None) -> Path:
        """Where save/load arguments reads and writes: a bare name lives in <save root>/configs."""
        text = (name or "").strip() or "webui_args.yaml"
        path = Path(text)
        return path if path.is_absolute() or len(path.parts) > 1 else self.args.save_root / "configs" / text

    def widget_updates(self, config: dict, values: dict) -> dict:
        """``{component: value}`` that shows a saved train config in the widgets."""
        updates, _ = self.args.train_values(config, values)
        out = {}
        for elem_id, value in updates.items():
            if elem_id in self.page:
                component = self.page[elem_id]
                if elem_id == "train.dataset":
                    out[component] = gr.update(value=value)
                else:
                    out[component] = value
        return out

    # --- the page ----------------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        page = self.page
        with gr.Blocks(title="tuneforge", analytics_enabled=False) as demo:
            page.make("app.title", gr.Markdown)
            top.build(self)
            with gr.Tabs():
                with page.make("tab.train", gr.Tab):
                    train.build(self)
                with page.make("tab.evaluate", gr.Tab):
                    evaluate.build(self)
                with page.make("tab.chat", gr.Tab):
                    chat.build(self)
                with page.make("tab.export", gr.Tab):
                    export.build(self)
            seen = gr.State({})
            timer = gr.Timer(POLL_SECONDS)
            for tab in (top, train, evaluate, chat, export):
                tab.wire(self)
            self._wire_language()
            self._wire_polling(timer, seen)
            demo.load(self._reattach, page.inputs(), page.inputs() | {page["train.status"]}, show_progress="hidden",
                      queue=False)
        self.demo = demo
        return demo

    def _wire_language(self) -> None:
        page = self.page
        localized = [page[i] for i in page.localized_ids()]
        page["top.lang"].change(page.relabel, page["top.lang"], localized, queue=False, show_progress="hidden")

    def _wire_polling(self, timer, seen) -> None:
        outputs = train.tick_outputs(self) + evaluate.tick_outputs(self) + export.tick_outputs(self)

        def poll(lang, seen_state):
            status = self.runner.status()
            seen_state = dict(seen_state or {})
            updates = train.tick(self, status, lang, seen_state) + evaluate.tick(self, status, lang, seen_state) \
                + export.tick(self, status, lang, seen_state)
            return [*updates, seen_state]

        timer.tick(poll, [self.page["top.lang"], seen], [*outputs, seen], show_progress="hidden", queue=False) \
            .then(None, None, None, js=FOLLOW_LOGS_JS)

    def _reattach(self, data):
        """A page (re)opened while a training job runs shows that job's settings, so what the page
        says and what runs agree; its progress, log and curve follow with the next poll."""
        nothing = {self.page["train.status"]: gr.skip()}  # gradio reads an empty dict as one value
        job = self.runner.job
        if job is None or job.kind != "train" or not self.runner.is_running():
            return nothing
        try:
            config = yaml.safe_load(job.config_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            return nothing
        values = self.page.values(data)
        updates = self.widget_updates(config, values)
        lang = values.get("top.lang", "en")
        updates[self.page["train.status"]] = locales.message("reattached", lang, where=job.workdir)
        return updates


def create_app(manager: PluginManager | None = None, **kwargs) -> gr.Blocks:
    """The web UI's gradio Blocks (not launched). ``kwargs`` go to :class:`WebUI`."""
    return WebUI(manager, **kwargs).build()


__all__ = ["WebUI", "create_app", "ArgumentError"]
