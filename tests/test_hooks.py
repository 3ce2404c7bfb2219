"""Every hook has a test that implements it the way a third party would, and every built-in plugin
module is registered.

``HOOK_TESTS`` maps each hook of tuneforge.hookspecs to the test that implements it outside the
package (a test package under tests/plugin_packages, or a plugin object registered in a test);
``test_every_hook_has_a_third_party_test`` fails when a hook is added without one (datasette's
"every hook has a test" is the model). The hooks nothing else in the suite implements are exercised
here, in one run that a plugin drives end to end: its loader loads the model, its chat template
renders, its dataset format converts a file its detection hook recognised, and its stage trains.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tuneforge import (
    ChatTemplateSpec,
    ConfigKey,
    DatasetFormatSpec,
    ModelLoaderSpec,
    StageSpec,
    hookimpl,
)
from tuneforge.plugin_manager import HOOK_NAMES, PluginManager

from .conftest import REPO

TESTS = REPO / "tests"
PACKAGES = TESTS / "plugin_packages"

#: hook -> "file::test" of a test that implements it as a third-party plugin would.
HOOK_TESTS: dict[str, str] = {
    "tuneforge_model_loaders": "test_hooks.py::test_a_third_party_plugin_drives_a_whole_run",
    "tuneforge_quantizers": "test_export.py::test_export_quantization_goes_through_a_quantizer_plugin",
    "tuneforge_methods": "test_third_party_plugins.py::test_normtune_trains_only_norm_weights",
    "tuneforge_chat_templates": "test_hooks.py::test_a_third_party_plugin_drives_a_whole_run",
    "tuneforge_dataset_formats": "test_hooks.py::test_a_third_party_plugin_drives_a_whole_run",
    "tuneforge_stages": "test_hooks.py::test_a_third_party_plugin_drives_a_whole_run",
    "tuneforge_reward_functions": "test_stage_grpo.py::test_reward_of_a_third_party_reward_function_rises",
    "tuneforge_inference_engines": "test_chat.py::test_a_third_party_engine_plugin_is_used",
    "tuneforge_commands": "test_third_party_plugins.py::test_plugin_verb_runs_and_shows_in_help",
    "tuneforge_detect_template": "test_plugin_manager.py::test_third_party_detection_hook_answers_before_builtins",
    "tuneforge_detect_dataset_format": "test_hooks.py::test_a_third_party_plugin_drives_a_whole_run",
    "tuneforge_model_ready": "test_train_pipeline.py::test_lifecycle_hooks_are_called_in_order",
    "tuneforge_trainer_created": "test_train_pipeline.py::test_lifecycle_hooks_are_called_in_order",
    "tuneforge_run_end": "test_train_pipeline.py::test_lifecycle_hooks_are_called_in_order",
}


def _test_source(location: str) -> str:
    """The test function's source, followed by the module-level helpers (functions, classes) it names."""
    file, name = location.split("::")
    path = TESTS / file
    assert path.is_file(), f"{location}: no such test file"
    text = path.read_text(encoding="utf-8")
    top = {node.name: ast.get_source_segment(text, node) or "" for node in ast.parse(text).body
           if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert name in top and name.startswith("test_"), f"{location}: no such test function"
    source = top[name]
    return "\n".join([source] + [body for helper, body in top.items()
                                  if helper != name and re.search(rf"\b{helper}\b", source)])


def _packages_used(source: str) -> list[Path]:
    """The tests/plugin_packages a test installs: named in it, or through a ``NAME_site`` fixture."""
    names = re.findall(r"tuneforge-[a-z]+", source) + [f"tuneforge-{n}" for n in re.findall(r"\b([a-z]+)_site\b", source)]
    return [PACKAGES / name for name in names if (PACKAGES / name).is_dir()]


def test_every_hook_has_a_third_party_test():
    assert set(HOOK_TESTS) == set(HOOK_NAMES), (
        f"hooks without a test in HOOK_TESTS: {sorted(set(HOOK_NAMES) - set(HOOK_TESTS))}; "
        f"entries for hooks that do not exist: {sorted(set(HOOK_TESTS) - set(HOOK_NAMES))}")
    for hook, location in HOOK_TESTS.items():
        source = _test_source(location)
        implementations = [source] + [p.read_text(encoding="utf-8") for pkg in _packages_used(source)
                                      for p in pkg.glob("*.py")]
        # `def hook(` in the test itself (a plugin object) or in a test package the test installs.
        assert any(re.search(rf"def {hook}\(", text) for text in implementations), (
            f"{location} does not implement {hook} (neither in the test nor in a tests/plugin_packages package it names)")


def _hookimpl_modules() -> set[str]:
    """Modules under plugins/ with a function decorated @hookimpl."""
    found = set()
    for path in sorted((REPO / "plugins").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for deco in node.decorator_list:
                    target = deco.func if isinstance(deco, ast.Call) else deco
                    if (isinstance(target, ast.Name) and target.id == "hookimpl") or (
                            isinstance(target, ast.Attribute) and target.attr == "hookimpl"):
                        found.add(".".join(("tuneforge", *path.relative_to(REPO).with_suffix("").parts)))
    return found


def test_every_plugin_module_with_a_hook_implementation_is_registered():
    from tuneforge.plugins import BUILTIN_MODULES

    modules = _hookimpl_modules()
    assert "tuneforge.plugins.methods.lora" in modules and "tuneforge.plugins.apps.chat.cli" in modules
    assert modules - set(BUILTIN_MODULES) == set(), "add these to BUILTIN_MODULES in plugins/__init__.py"
    assert set(BUILTIN_MODULES) - modules == set(), "BUILTIN_MODULES lists modules without a hook implementation"
    assert len(BUILTIN_MODULES) == len(set(BUILTIN_MODULES))


def test_builtin_plugins_are_all_healthy():
    manager = PluginManager(autoload=False)
    assert manager.broken_records() == []
    assert manager.errors() == []
    assert [e.name for e in manager.entries() if e.status.startswith(("broken", "error"))] == []


# --- one plugin, five hooks, one run -------------------------------------------------------------------


class QAPlugin:
    """A third-party plugin as a class instance: a loader, a chat template, a dataset format with its
    detection, and a stage. It records what the core asked of it."""

    def __init__(self):
        self.calls: list[str] = []

    # the loader: plain transformers, counting its calls
    def load(self, ctx):
        from transformers import AutoModelForCausalLM

        self.calls.append("load")
        model = AutoModelForCausalLM.from_pretrained(ctx.config.model_name_or_path)
        return model, self.load_tokenizer(ctx)

    def load_tokenizer(self, ctx):
        from transformers import AutoTokenizer

        self.calls.append("load_tokenizer")
        return AutoTokenizer.from_pretrained(ctx.config.model_name_or_path)

    @hookimpl
    def tuneforge_model_loaders(self):
        return [ModelLoaderSpec(name="qa-loader", description="transformers, counted", load=self.load,
                                load_tokenizer=self.load_tokenizer)]

    @hookimpl
    def tuneforge_chat_templates(self):
        definition = {"format_user": "Q: {{content}}\n", "format_assistant": "A: {{content}}{{eos_token}}\n"}
        return [ChatTemplateSpec(name="qa-chat", description="Q:/A: turns", definition=definition)]

    # the format: rows {"q": ..., "a": ...}
    def convert(self, row, attr):
        self.calls.append("convert")
        return {"messages": [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}]}

    @hookimpl
    def tuneforge_dataset_formats(self):
        return [DatasetFormatSpec(name="qa", description="q/a rows", convert=self.convert)]

    @hookimpl
    def tuneforge_detect_dataset_format(self, path, row):
        self.calls.append(f"detect {Path(path).name}")
        return "qa" if {"q", "a"} <= set(row) else None

    # the stage: one gradient step on the first example, rendered by the planned template
    def run(self, ctx):
        import torch

        from tuneforge.data.loading import load_examples

        self.calls.append("run")
        [converted] = load_examples(ctx, ctx.plan.datasets, "supervised")
        example = converted.examples[0]
        prompt = ctx.template.render_prompt(ctx.tokenizer, example["messages"][:1])
        ids = ctx.tokenizer(prompt + example["messages"][1]["content"], return_tensors="pt").input_ids
        optimizer = torch.optim.SGD([p for p in ctx.model.parameters() if p.requires_grad], lr=ctx.config.qa_lr)
        before = ctx.model(input_ids=ids, labels=ids).loss
        before.backward()
        optimizer.step()
        with torch.no_grad():
            after = ctx.model(input_ids=ids, labels=ids).loss
        return {"rows": len(converted.examples), "prompt": prompt, "loss_before": before.item(), "loss_after": after.item()}

    @hookimpl
    def tuneforge_stages(self):
        return [StageSpec(name="qa-step", description="one SGD step", run=self.run, data_kind="supervised",
                          keys=(ConfigKey("qa_lr", float, 0.5, "learning rate of the one step"),))]


def test_a_third_party_plugin_drives_a_whole_run(tiny_model, tmp_path):
    from tuneforge.plan import prepare
    from tuneforge.train.pipeline import run_training

    rows = [{"q": "What is two plus two?", "a": "Four."}, {"q": "Capital of France?", "a": "Paris."}]
    data = tmp_path / "qa_rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plugin = QAPlugin()
    manager = PluginManager(autoload=False, extra_plugins=[("qa", plugin)])
    assert {e.name: e.kind for e in manager.entries() if e.record.name == "qa"} == {
        "qa-loader": "loader", "qa-chat": "template", "qa": "format", "qa-step": "stage"}

    prepared = prepare(None, [f"model_name_or_path={tiny_model}", "model_loader=qa-loader", "template=qa-chat",
                              "stage=qa-step", f"dataset={data}", "finetuning_type=full", "qa_lr=0.5",
                              f"output_dir={tmp_path / 'out'}", "cutoff_len=64"], manager=manager)
    assert [(role, name) for role, name, _ in prepared.plan.describe()
            if role in ("loader", "template", "stage")] == [("loader", "qa-loader"), ("template", "qa-chat"), ("stage", "qa-step")]
    ctx = run_training(prepared)

    assert plugin.calls[:1] == ["load"] and "detect qa_rows.jsonl" in plugin.calls and "run" in plugin.calls
    assert plugin.calls.count("convert") == 2
    assert prepared.plan.datasets[0].attr.formatting == "qa"  # the detection hook named the format
    metrics = ctx.metrics
    assert metrics["rows"] == 2
    assert metrics["prompt"] == "Q: What is two plus two?\n"
    assert metrics["loss_after"] < metrics["loss_before"]
