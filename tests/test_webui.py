"""`tuneforge webui` without a browser: the page builds from the plugins (a pip-installed third-party
method included), every text is translated, the previewed config is what `tuneforge check` accepts,
saved arguments load back, and the runner starts, aborts and survives a crashing training run."""

from __future__ import annotations

import json
import os
import re
import string
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

gr = pytest.importorskip("gradio", reason="the web UI needs gradio: pip install 'tuneforge[webui]'")

from tuneforge.plugin_manager import PluginManager  # noqa: E402
from tuneforge.plugins.apps.webui import locales, registry  # noqa: E402
from tuneforge.plugins.apps.webui.args import (  # noqa: E402
    PLUGIN_SELECTORS, ArgumentError, is_adapter, list_checkpoints, plugin_accordion, plugin_element, to_yaml, visible_keys,
)
from tuneforge.plugins.apps.webui.fields import NONE_CHOICE, WidgetValueError, from_widget, to_widget, widget_spec  # noqa: E402

from .conftest import REPO, pip_install_plugin_package, run_cli  # noqa: E402

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

WIDGET_CLASSES = {"checkbox": gr.Checkbox, "number": gr.Number, "dropdown": gr.Dropdown, "text": gr.Textbox, "yaml": gr.Textbox}


def build_ui(manager=None, **kwargs):
    from tuneforge.plugins.apps.webui.app import WebUI

    ui = WebUI(manager or PluginManager(autoload=False), **kwargs)
    ui.build()
    return ui


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    return build_ui(save_root=tmp_path_factory.mktemp("saves"), dataset_dir=str(REPO / "data"))


def form(ui, **changes) -> dict:
    """The page's values as it opens, with ``changes`` (element id with dots as __)."""
    values = ui.page.initial_values()
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return values


# --- languages --------------------------------------------------------------------------------------


def test_every_component_has_a_label_in_every_language(ui):
    page = ui.page
    fixed = page.fixed_ids()
    assert {"train.status", "train.progress", "export.summary"} <= page.output_ids  # messages only: no label
    missing = [(i, lang) for i in fixed for lang in locales.LANGUAGES
               if not locales.LOCALES.get(i, {}).get(lang, {}).get("label", "").strip()]
    assert not missing, f"components without a label: {missing}"
    # the same texts exist in each language (an info line in English has a Chinese one)
    for elem_id, entry in locales.LOCALES.items():
        assert set(entry) == set(locales.LANGUAGES), elem_id
        assert {k for k, v in entry["en"].items() if v} == {k for k, v in entry["zh"].items() if v}, elem_id
    assert not set(locales.LOCALES) & page.output_ids
    stale = set(locales.LOCALES) - set(page.elements)
    assert not stale, f"locale entries for components the page does not have: {sorted(stale)}"


def test_every_message_is_translated_with_the_same_placeholders():
    for msg_id, texts in locales.MESSAGES.items():
        assert set(texts) == set(locales.LANGUAGES), msg_id
        fields = {lang: {f for _, f, _, _ in string.Formatter().parse(t) if f} for lang, t in texts.items()}
        assert fields["en"] == fields["zh"], (msg_id, fields)
    # every message id the code uses exists
    used = set()
    for path in (REPO / "plugins" / "apps" / "webui").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"""message\(\s*["']([a-z_]+)["']""", text))
        for prefix in re.findall(r"""message\(\s*f["']([a-z_]+)\{""", text):
            assert any(m.startswith(prefix) for m in locales.MESSAGES), prefix
    assert used - set(locales.MESSAGES) == set()


def test_switching_to_chinese_relabels_the_page(ui):
    page = ui.page
    updates = dict(zip(page.localized_ids(), page.relabel("zh")))
    assert len(updates) == len(page.localized_ids())
    assert updates["train.learning_rate"]["label"] == "学习率"
    assert updates["train.learning_rate"]["info"] == "AdamW 的初始学习率。"
    assert updates["train.start_btn"]["value"] == "开始"
    assert updates["tab.chat"]["label"] == "对话"
    assert updates[plugin_accordion("method", "lora")]["label"] == "lora（微调方法插件）参数设置"
    # a plugin key keeps its name (what the YAML says) and the plugin's doc
    lora_rank = updates[plugin_element("method", "lora", "lora_rank")]
    assert lora_rank["label"] == "lora_rank" and "rank" in lora_rank["info"].lower()
    back = dict(zip(page.localized_ids(), page.relabel("en")))
    assert back["train.learning_rate"]["label"] == "Learning rate"


# --- generated from the plugins ----------------------------------------------------------------------


def _choice_values(component) -> list:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in component.choices]


def test_dropdowns_list_the_installed_plugins(ui):
    page, manager = ui.page, ui.manager
    assert _choice_values(page["top.finetuning_type"]) == manager.names("method")
    assert _choice_values(page["train.stage"]) == manager.names("stage")
    assert _choice_values(page["top.quantization_method"]) == manager.names("quantizer")
    assert _choice_values(page["chat.infer_backend"]) == manager.names("engine")
    # "auto" (unset: detected, else the tokenizer's own template) first, then every template that can run here
    assert _choice_values(page["top.template"]) == ["auto", *(e.name for e in manager.entries("template")
                                                             if e.status == "active" and e.name != "auto")]
    # a plugin that cannot run here says so in its label
    labels = dict((v, k) for k, v in page["top.quantization_method"].choices)
    assert labels["eetq"].startswith("eetq (unavailable")


def test_each_plugin_key_gets_a_widget_from_its_type(ui):
    page, manager = ui.page, ui.manager
    count = 0
    for kind in PLUGIN_SELECTORS:
        for entry in manager.entries(kind):
            assert plugin_accordion(kind, entry.name) in page
            for key in visible_keys(entry.spec):
                component = page[plugin_element(kind, entry.name, key.name)]
                assert isinstance(component, WIDGET_CLASSES[widget_spec(key).kind]), (kind, entry.name, key.name)
                count += 1
    assert count > 100
    # only the selected plugin's accordion is shown; the selecting flag is not a widget of its own
    assert page[plugin_accordion("method", "lora")].visible is True
    assert page[plugin_accordion("method", "galore")].visible is False
    assert plugin_element("method", "galore", "use_galore") not in page
    assert isinstance(page[plugin_element("method", "lora", "lora_rank")], gr.Number)
    assert page[plugin_element("method", "lora", "lora_rank")].value == 8
    assert isinstance(page[plugin_element("method", "lora", "use_dora")], gr.Checkbox)


def test_widget_specs_and_conversions():
    from tuneforge.specs import ConfigKey

    assert widget_spec(ConfigKey("a", bool, False)).kind == "checkbox"
    optional = widget_spec(ConfigKey("a", bool, None))
    assert optional.kind == "dropdown" and optional.value == NONE_CHOICE
    assert from_widget(ConfigKey("a", bool, None), "true") is True
    assert from_widget(ConfigKey("a", bool, None), NONE_CHOICE) is None
    choice = ConfigKey("mode", str, "layer", choices=("layer", "ratio"))
    assert widget_spec(choice).choices == (NONE_CHOICE, "layer", "ratio")
    assert from_widget(choice, "ratio") == "ratio"
    number = ConfigKey("rank", int, 8)
    assert widget_spec(number).integer and from_widget(number, 16.0) == 16 and isinstance(from_widget(number, 16.0), int)
    with pytest.raises(WidgetValueError, match="rank"):
        from_widget(number, "many")
    assert from_widget(ConfigKey("lr", float, None), "1e-4") == pytest.approx(1e-4)
    unset_number = ConfigKey("layers", int, None)
    assert widget_spec(unset_number).kind == "text" and from_widget(unset_number, "") is None
    assert from_widget(unset_number, "3") == 3
    mapping = ConfigKey("placeholders", dict, None)
    assert widget_spec(mapping).kind == "yaml"
    assert from_widget(mapping, "{name: Greatbot}") == {"name": "Greatbot"}
    assert from_widget(mapping, "") is None
    assert to_widget(mapping, {"name": "Greatbot"}) == "{name: Greatbot}"
    target = ConfigKey("lora_target", (str, list), "all")
    assert from_widget(target, "q_proj,v_proj") == "q_proj,v_proj"


def test_known_models_come_from_the_template_plugins(manager):
    templates = set(manager.names("template"))
    names = registry.model_names(manager)
    assert names[0] == registry.CUSTOM and len(names) > 20
    for model in registry.known_models(manager):
        assert model.template in templates, model
    qwen3 = registry.known_model(manager, "Qwen3-8B")
    assert (qwen3.hub_id, qwen3.template) == ("Qwen/Qwen3-8B", "qwen3")
    assert registry.known_model(manager, "Llama-3-8B-Instruct").template == "llama3"
    assert registry.model_key(registry.CUSTOM, "/x/saves/tiny-llama3/") == "tiny-llama3"
    assert registry.model_key("Qwen3-8B", "Qwen/Qwen3-8B") == "Qwen3-8B"


# --- the config Start runs -------------------------------------------------------------------------------


def test_previewed_config_is_what_tuneforge_check_accepts(ui, tiny_model, tmp_path):
    values = form(ui, top__model_path=str(tiny_model), train__dataset=["identity"], train__dataset_dir=str(REPO / "data"),
                  train__replace_placeholders="{name: Greatbot, author: Allen}")
    values[plugin_element("method", "lora", "lora_rank")] = 16
    config = ui.args.train_config(values)
    assert config["stage"] == "sft" and config["finetuning_type"] == "lora" and config["lora_rank"] == 16
    assert config["replace_placeholders"] == {"name": "Greatbot", "author": "Allen"}
    assert "lora_alpha" not in config  # plugin keys left at their default stay out of the YAML
    assert "packing" not in config  # an unticked box is no key (pt packs unless told not to)
    assert Path(config["output_dir"]).parent == Path(ui.args.save_root) / tiny_model.name / "lora"
    path = tmp_path / "preview.yaml"
    path.write_text(to_yaml(config), encoding="utf-8")
    result = run_cli("check", str(path))
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout and "lora" in result.stdout
    assert ui.check(config, "en") == "tuneforge check: config OK"


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "pissa", "freeze", "full", "galore", "apollo", "badam"])
def test_every_method_previews_a_valid_config(ui, tiny_model, method):
    values = form(ui, top__model_path=str(tiny_model), top__finetuning_type=method, train__dataset=["alpaca_en_demo"],
                  train__dataset_dir=str(REPO / "data"))
    config = ui.args.train_config(values)
    assert ui.problems(config) == "", to_yaml(config)


def test_a_bad_widget_value_names_its_field(ui, tiny_model):
    values = form(ui, top__model_path=str(tiny_model), train__learning_rate="fast")
    with pytest.raises(ArgumentError, match="train.learning_rate.*learning_rate"):
        ui.args.train_config(values)
    values = form(ui, top__model_path=str(tiny_model), train__dataset=["nope"])
    assert "unknown dataset" in ui.problems(ui.args.train_config(values)) or "nope" in ui.problems(ui.args.train_config(values))


def test_save_and_load_arguments_round_trip(ui, tiny_model):
    values = form(ui, top__model_path=str(tiny_model), top__finetuning_type="dora", top__booster="flashattn2",
                  train__dataset=["identity", "alpaca_en_demo"], train__compute_type="bf16", train__val_size=0.1,
                  train__packing=True, train__report_to=["tensorboard", "swanlab"], train__neftune_alpha=5,
                  train__extra_args="weight_decay: 0.01\noptim: adamw_torch")
    values[plugin_element("method", "dora", "lora_rank")] = 4
    values[plugin_element("stage", "sft", "nonexistent")] = 1  # ignored: not a key of sft
    config = ui.args.train_config(values)
    assert config["flash_attn"] == "fa2" and config["bf16"] is True and config["use_swanlab"] is True
    assert config["report_to"] == "tensorboard" and config["eval_strategy"] == "steps" and config["weight_decay"] == 0.01
    loaded, left = ui.args.train_values(yaml.safe_load(to_yaml(config)), values)
    assert left == {"weight_decay": 0.01, "optim": "adamw_torch"}
    fresh = form(ui)
    fresh.update(loaded)
    assert fresh[plugin_element("method", "dora", "lora_rank")] == 4
    assert fresh[plugin_element("method", "lora", "lora_rank")] == 4  # every accordion with that key shows it
    again = ui.args.train_config(fresh)
    assert again == config


def test_checkpoints_are_listed_and_loaded_as_adapter_or_model(ui, tiny_model):
    values = form(ui, top__model_path=str(tiny_model), top__finetuning_type="lora")
    root = ui.args.method_root(values)
    adapter = root / "train_a"
    (adapter / "checkpoint-10").mkdir(parents=True)
    for folder in (adapter, adapter / "checkpoint-10"):
        (folder / "adapter_config.json").write_text("{}")
    (root / "empty_run").mkdir()
    assert list_checkpoints(root) == ["train_a", "train_a/checkpoint-10"]
    values["top.checkpoint_path"] = ["train_a/checkpoint-10"]
    config = ui.args.model_config(values, for_training=False)
    assert config["adapter_name_or_path"] == str(adapter / "checkpoint-10") and config["model_name_or_path"] == str(tiny_model)
    assert is_adapter(adapter)
    full = form(ui, top__model_path=str(tiny_model), top__finetuning_type="full", top__checkpoint_path=[str(tiny_model)])
    config = ui.args.model_config(full, for_training=False)
    assert config["model_name_or_path"] == str(tiny_model) and "adapter_name_or_path" not in config


def test_dataset_paths_outside_dataset_dir_are_refused(ui, tiny_model, tmp_path):
    """A dataset_info.json whose file_name climbs out of dataset_dir (or a data file named directly):
    the preview, the data doctor and Start (ui.problems) refuse it with the reason; nothing is read."""
    from tuneforge.plugins.apps.webui.data_preview import preview_rows, run_doctor

    secret = tmp_path / "secret.json"
    secret.write_text('[{"instruction": "password", "output": "hunter2"}]')
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.json").write_text('[{"instruction": "q", "output": "a"}]')
    (data / "link.json").symlink_to(secret)
    (data / "dataset_info.json").write_text(json.dumps({
        "ok": {"file_name": "ok.json"}, "escape": {"file_name": "../secret.json"},
        "absolute": {"file_name": str(secret)}, "link": {"file_name": "link.json"}}))
    for name in ("escape", "absolute", "link"):
        with pytest.raises(ValueError, match="outside dataset_dir") as info:
            preview_rows(data, name)
        assert "hunter2" not in str(info.value)
    assert preview_rows(data, "ok")[1] == [["q", "a"]]
    for dataset in ("escape", str(secret)):
        values = form(ui, top__model_path=str(tiny_model), top__template="llama3", train__dataset=[dataset],
                      train__dataset_dir=str(data))
        config = ui.args.train_config(values)
        code, report, example = run_doctor(config)
        assert code == 2 and "outside dataset_dir" in report and "hunter2" not in report and example == []
        problems = ui.problems(config)
        assert "outside dataset_dir" in problems and str(data.resolve()) in problems
    ok = ui.args.train_config(form(ui, top__model_path=str(tiny_model), top__template="llama3", train__dataset=["ok"],
                                   train__dataset_dir=str(data)))
    assert ui.problems(ok) == ""


def test_data_preview_and_the_data_doctor(ui, tiny_model):
    from tuneforge.plugins.apps.webui.data_preview import TRAINED, dataset_names, preview_rows, run_doctor

    assert {"identity", "alpaca_en_demo", "dpo_en_demo"} <= set(dataset_names(REPO / "data"))
    headers, rows, total = preview_rows(REPO / "data", "identity", limit=3)
    assert headers == ["instruction", "input", "output"] and len(rows) == 3 and total == 95
    assert rows[0][0] == "hi" and "{{name}}" in rows[0][2]
    values = form(ui, top__model_path=str(tiny_model), top__template="llama3", train__dataset=["identity"],
                  train__dataset_dir=str(REPO / "data"), train__replace_placeholders="{name: Greatbot, author: Allen}")
    code, report, example = run_doctor(ui.args.train_config(values))
    assert code == 0, report
    assert "'identity'" in report and "95 rows, all valid" in report and "result: OK" in report
    trained = "".join(text for text, label in example if label == TRAINED)
    prompt = "".join(text for text, label in example if label is None)
    assert "Greatbot" in trained and "Allen" in trained  # the reply is trained, with the placeholders filled
    assert "hi" in prompt and "<|start_header_id|>user" in prompt  # the prompt is not


def test_predict_benchmark_chat_and_export_configs_pass_check(ui, tiny_model, tmp_path):
    values = form(ui, top__model_path=str(tiny_model), eval__dataset=["identity"], eval__dataset_dir=str(REPO / "data"),
                  bench__task_dir=str(REPO / "data" / "evaluation"), export__export_dir=str(tmp_path / "export"))
    predict = ui.args.predict_config(values)
    assert predict["do_predict"] and predict["predict_with_generate"] and predict["do_train"] is False
    assert predict["eval_dataset"] == "identity" and predict["per_device_eval_batch_size"] == 2
    assert ui.problems(predict) == ""
    bench = ui.args.benchmark_config(values)
    assert bench["task"] == "mmlu_demo_test" and bench["n_shot"] == 5
    assert ui.problems(bench, require=("model_name_or_path", "task")) == ""
    chat = ui.args.chat_config(values)
    assert chat["infer_backend"] == "huggingface" and "finetuning_type" not in chat
    export = ui.args.export_config(values)
    assert export["export_dir"] == str(tmp_path / "export") and export["export_size"] == 5
    assert ui.problems(export) == ""


# --- a pip-installed third-party method ----------------------------------------------------------------


@pytest.fixture(scope="module")
def normtune_site(tmp_path_factory) -> Path:
    return pip_install_plugin_package("tuneforge-normtune", tmp_path_factory.mktemp("normtune") / "site")


def test_third_party_method_shows_up_with_its_keys(normtune_site, tiny_model, tmp_path, monkeypatch):
    """tuneforge-normtune, installed with pip, has no UI code: its dropdown entry, accordion and
    widgets come from its spec, and its keys reach the config and its own validation."""
    import tuneforge.plugin_manager as plugin_manager

    monkeypatch.syspath_prepend(str(normtune_site))
    installed = [ep for dist in metadata.distributions(path=[str(normtune_site)]) for ep in dist.entry_points
                 if ep.group == plugin_manager.ENTRY_POINT_GROUP]
    assert installed
    monkeypatch.setattr(plugin_manager, "_entry_points", lambda: installed)
    ui = build_ui(PluginManager(autoload=True), save_root=tmp_path / "saves", dataset_dir=str(REPO / "data"))
    page = ui.page
    assert "normtune" in _choice_values(page["top.finetuning_type"])
    assert isinstance(page[plugin_element("method", "normtune", "normtune_include_embeddings")], gr.Checkbox)
    layers = page[plugin_element("method", "normtune", "normtune_layers")]
    assert isinstance(layers, gr.Textbox) and layers.value == ""  # an int whose default is unset: empty means unset
    assert layers.info.startswith("Train the norms of the last n decoder layers")
    accordion = page[plugin_accordion("method", "normtune")]
    assert accordion.label == "normtune (method plugin) settings" and accordion.visible is False
    about = page[f"{plugin_accordion('method', 'normtune')}.about"].value
    assert "tuneforge-normtune" in about and "Train only the normalisation weights" in about

    values = form(ui, top__model_path=str(tiny_model), top__finetuning_type="normtune", train__dataset=["identity"],
                  train__dataset_dir=str(REPO / "data"))
    values[plugin_element("method", "normtune", "normtune_layers")] = "1"
    config = ui.args.train_config(values)
    assert config["finetuning_type"] == "normtune" and config["normtune_layers"] == 1
    assert ui.problems(config) == ""
    values[plugin_element("method", "normtune", "normtune_layers")] = "-1"
    assert "normtune_layers must be a positive number" in ui.problems(ui.args.train_config(values))
    # and the CLI, finding the plugin through its entry point, accepts the previewed YAML
    values[plugin_element("method", "normtune", "normtune_layers")] = "1"
    path = tmp_path / "normtune.yaml"
    path.write_text(to_yaml(ui.args.train_config(values)), encoding="utf-8")
    env = {"TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD": "0", "PYTHONPATH": str(normtune_site)}
    result = run_cli("check", str(path), env=env)
    assert result.returncode == 0 and "normtune" in result.stdout, result.stderr


# --- the runner: start, abort, crash -----------------------------------------------------------------------


def _train_config(tiny_model, output_dir: Path, **extra) -> dict:
    config = {"stage": "sft", "do_train": True, "model_name_or_path": str(tiny_model), "finetuning_type": "lora",
              "template": "llama3", "dataset": "identity", "dataset_dir": str(REPO / "data"), "cutoff_len": 64,
              "max_samples": 16, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
              "output_dir": str(output_dir), "report_to": "none", "disable_tqdm": True, "save_strategy": "no"}
    config.update(extra)
    return config


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_runner_trains_reports_progress_and_loss(tiny_model, tmp_path):
    from tuneforge.plugins.apps.webui.runner import Runner
    from tuneforge.plugins.apps.webui.tabs.train import loss_frame, progress_html, status_text

    runner = Runner()
    output_dir = tmp_path / "run"
    runner.start("train", "train", _train_config(tiny_model, output_dir, max_steps=6), output_dir)
    assert runner.status().running
    assert runner.wait(300) == 0
    status = runner.status()
    assert status.state == "finished", status.log
    assert status.progress.current_steps == 6 and status.progress.total_steps == 6 and status.progress.percentage == 100
    assert [s for s, _ in status.losses] == [1, 2, 3, 4, 5, 6]
    assert "done:" in status.log and (output_dir / "running_log.txt").is_file()
    assert "6/6" in progress_html(status, "en") and "width:100.0%" in progress_html(status, "en")
    assert "第 6/6 步" in progress_html(status, "zh")
    assert len(loss_frame(status.losses, "en")) == 12  # raw and smoothed
    assert status_text(status, "en").startswith("Training finished")


def test_abort_stops_gracefully_and_leaves_a_resumable_checkpoint(tiny_model, tmp_path):
    from tuneforge.train.hf_trainer import checkpoint_problem
    from tuneforge.plugins.apps.webui.runner import Runner
    from tuneforge.plugins.apps.webui.tabs.train import status_text

    runner = Runner()
    output_dir = tmp_path / "run"
    runner.start("train", "train", _train_config(tiny_model, output_dir, max_steps=10000, save_steps=100000), output_dir)
    _wait(lambda: runner.status().losses, 300, "the first logged step")
    assert runner.abort()
    assert runner.status().aborting
    code = runner.wait(120)
    status = runner.status()
    assert code == 130 and status.state == "aborted", status.log
    checkpoints = list(output_dir.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and checkpoint_problem(checkpoints[0]) is None
    assert "saved" in status.log and str(checkpoints[0]) in status_text(status, "en")
    assert not runner.abort()  # nothing left to stop


def test_a_crashing_run_reports_its_error_and_the_runner_keeps_working(tiny_model, tmp_path):
    from tuneforge.plugins.apps.webui.runner import Runner, RunnerBusy

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}')
    runner = Runner()
    runner.start("train", "train", _train_config(broken, tmp_path / "crash"), tmp_path / "crash")
    with pytest.raises(RunnerBusy):
        runner.start("train", "train", _train_config(tiny_model, tmp_path / "other"), tmp_path / "other")
    runner.wait(300)
    status = runner.status()
    assert status.state == "failed" and status.returncode not in (0, 130)
    assert status.error and ("Error" in status.error or "error" in status.error)
    # the same runner starts the next job
    runner.start("train", "train", _train_config(tiny_model, tmp_path / "ok", max_steps=1), tmp_path / "ok")
    assert runner.wait(300) == 0


def test_benchmark_job_shows_its_scores(ui, tiny_model, tmp_path):
    """The Benchmark button's job: `tuneforge eval` on the shipped MMLU-layout demo; scores.json is shown."""
    from tuneforge.plugins.apps.webui.runner import Runner
    from tuneforge.plugins.apps.webui.tabs.evaluate import BENCH_CONFIG, benchmark_tasks, read_results

    assert benchmark_tasks(REPO / "data" / "evaluation") == ["mmlu_demo_test"]
    values = form(ui, top__model_path=str(tiny_model), top__template="llama3", bench__task_dir=str(REPO / "data" / "evaluation"),
                  bench__save_dir=str(tmp_path / "bench"), bench__n_shot=1)
    config = ui.args.benchmark_config(values)
    runner = Runner()
    runner.start("eval", "eval", config, tmp_path / "bench", config_name=BENCH_CONFIG)
    assert runner.wait(300) == 0, runner.status().log
    status = runner.status()
    scores = read_results(status)
    assert status.state == "finished" and scores["task"] == "mmlu_demo_test" and "average" in scores, status.log


def test_export_verification_report_in_words():
    from tuneforge.plugins.apps.webui.tabs.export import verification_summary

    report = {"weights": {"compared": 21, "max_abs_diff": 0.29, "changed": 14}, "reload": "ok",
              "logits_vs_adapter_max_abs_diff": 9.5e-07, "tolerance": 3e-05, "top_token_agreement": "49/49",
              "chat_template_matches_training": True, "failures": []}
    text = verification_summary(report, "en")
    assert text.startswith("**Verification passed**") and "14 of 21 tensors changed" in text and "49/49" in text
    failed = verification_summary({**report, "failures": ["the merge changed nothing"]}, "zh")
    assert failed.startswith("**验证失败") and "✗ the merge changed nothing" in failed
    assert verification_summary(None, "en") == ""


def test_a_reloaded_page_reattaches_to_the_running_job(tiny_model, tmp_path):
    """A page opened while a training job runs shows that job's settings, output dir and a note."""
    from tuneforge.plugins.apps.webui.runner import Runner

    class SleepingRunner(Runner):  # a job that runs long enough to be seen running, without training
        def argv(self, verb, config_path):
            return ["sleep", "60"]

    fresh = build_ui(runner=SleepingRunner(), save_root=tmp_path / "saves")
    config = _train_config(tiny_model, tmp_path / "job", finetuning_type="full")
    fresh.runner.start("train", "train", config, tmp_path / "job", config_name="webui_train.yaml")
    try:
        page = fresh.page
        opened = {page[i]: v for i, v in page.initial_values().items()}
        shown = page.values(fresh._reattach(opened))
        assert shown["train.output_dir"] == str(tmp_path / "job")
        assert shown["top.finetuning_type"] == "full" and shown["top.model_path"] == str(tiny_model)
        assert shown["train.dataset"]["value"] == ["identity"]
        assert "Reattached to the running job" in shown["train.status"]
    finally:
        fresh.runner.terminate(5)
    assert page.values(fresh._reattach(opened)) == {"train.status": gr.skip()}  # nothing runs: nothing changes


# --- the command ----------------------------------------------------------------------------------------


def test_server_settings_follow_llamafactory_environment():
    from types import SimpleNamespace

    from tuneforge.plugins.apps.webui.cli import exposure_warning, server_settings

    args = SimpleNamespace(host=None, port=None, share=False, auth=None)
    settings = server_settings(args, {})
    assert settings == {"server_name": "127.0.0.1", "server_port": 7860, "share": False, "auth": None}
    assert exposure_warning(settings) is None
    settings = server_settings(args, {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8080", "GRADIO_SHARE": "true"})
    assert settings == {"server_name": "0.0.0.0", "server_port": 8080, "share": True, "auth": None}
    assert "without a login" in exposure_warning(settings)
    settings = server_settings(args, {"GRADIO_SERVER_NAME": "0.0.0.0", "TUNEFORGE_WEBUI_AUTH": "me:secret"})
    assert settings["auth"] == ("me", "secret") and "asks for the --auth login" in exposure_warning(settings)


def test_missing_extra_names_the_pip_command(monkeypatch, capsys):
    from tuneforge.cli.main import main
    from tuneforge.specs import Requirement

    monkeypatch.setattr(Requirement, "missing", lambda self: self.module == "gradio")
    assert main(["webui"]) == 2
    assert "error: tuneforge webui needs gradio: pip install 'tuneforge[webui]'" in capsys.readouterr().err
