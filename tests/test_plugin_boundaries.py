"""What a plugin can do is asked of its spec, never decided from a list of plugin names (issue 15).

The scan reads every string literal (with ast) in core/ and in each plugin family under plugins/, and
fails on a literal equal to the name of a built-in plugin of another kind: the core names no plugin at
all, a stage names no method, a method no quantizer... The one defaults table, DEFAULT_SELECTIONS,
names the default of each kind. The few literals that only *look like* plugin names (a data kind that
is also a stage's name, a model_type, a pip package, a config value of LLaMA-Factory's) are listed
below with the reason; the test also fails when one of them is no longer there, so the list stays true.
"""

from __future__ import annotations

import ast
from collections import defaultdict

from tuneforge.plugin_manager import PluginManager
from tuneforge.specs import KINDS

from .conftest import REPO

#: plugins/<folder> -> the kind of plugin it holds. Folders not listed (apps) name no kind of their own.
FAMILIES = {"methods": "method", "quantizers": "quantizer", "stages": "stage", "templates": "template",
            "formats": "format", "loaders": "loader", "engines": "engine", "rewards": "reward"}

#: (file, literal) -> why the literal is not a plugin's name there.
NOT_PLUGIN_NAMES = {
    # 'auto', 'default' and 'index' became template names (the tokenizer's own template, LLaMA-Factory's
    # `default` and `index`); in these files they are ordinary values, not the templates.
    ("core/cli/data.py", "auto"): "--color auto",
    ("core/config/refusals.py", "auto"): "LLaMA-Factory's fp8_backend default",
    ("core/train/model_config.py", "llama3"): "a rope_scaling type",
    ("plugins/stages/supervised.py", "accuracy"): "the eval metric LLaMA-Factory calls accuracy",
    ("core/config/hf_training_args.py", "default"): "torch_compile_mode: default",
    ("core/config/model_checks.py", "default"): "a tokenizer's named chat templates: the one called 'default'",
    ("core/config/keys.py", "auto"): "LLaMA-Factory's 'auto' values (infer_dtype, flash_attn, export_device, ...)",
    ("core/data/dataset.py", "index"): "a column name of datasets' own",
    ("core/data/tokenizer_template.py", "auto"): "the display name a tokenizer's own template gets when its plugin gives none",
    ("core/data/tokenizer_template.py", "default"): "a tokenizer's named chat templates: the one called 'default'",
    ("core/train/context.py", "auto"): "infer_dtype: auto",
    ("plugins/apps/api/app.py", "index"): "the OpenAI response field 'index'",
    ("plugins/apps/api/protocol.py", "auto"): "OpenAI's tool_choice: auto",
    ("plugins/apps/export/exporter.py", "auto"): "export_device / device_map: auto",
    ("plugins/apps/expand/expander.py", "auto"): "transformers' dtype 'auto' (the checkpoint's own)",
    ("plugins/apps/webui/args.py", "auto"): "LLaMA-Factory's web UI choices 'auto' (template detected, booster)",
    ("plugins/apps/webui/tabs/top.py", "auto"): "the web UI's 'auto' choice",
    ("plugins/loaders/huggingface.py", "auto"): "transformers' dtype/device_map 'auto'",
    ("plugins/quantizers/_common.py", "auto"): "device_map / dtype 'auto'",
    ("plugins/stages/_models.py", "auto"): "transformers' dtype 'auto'",
    ("core/config/model.py", "default"): "where a value came from: the declared default",
    ("core/data/template.py", "default"): "a JSON schema's 'default' (a tool parameter's default value)",
    ("core/config/hf_training_args.py", "huggingface"): "transformers' default trackio project name",
    ("core/config/hf_training_args.py", "length"): "transformers' length_column_name default",
    ("core/config/keys.py", "llama3"): "a rope_scaling type",
    ("core/planner/estimate.py", "qwen3"): "a model_type (config.json), not a template",
    ("core/planner/estimate.py", "gemma3"): "a model_type (config.json), not a template",
    ("core/cli/env.py", "bitsandbytes"): "a pip package `tuneforge env` reports",
    ("core/cli/env.py", "hqq"): "a pip package `tuneforge env` reports",
    ("core/cli/env.py", "badam"): "a pip package `tuneforge env` reports",
    ("core/cli/env.py", "vllm"): "a pip package `tuneforge env` reports",
    ("core/cli/env.py", "sglang"): "a pip package `tuneforge env` reports",
    ("core/cli/env.py", "openai"): "a pip package `tuneforge env` reports",
    ("core/data/doctor.py", "full"): "the doctor's report of a whole row",
    ("core/data/tokenize.py", "kto"): "the data kind of unpaired labelled rows",
    ("core/data/collator.py", "kto"): "the data kind of unpaired labelled rows",
    ("core/data/doctor.py", "kto"): "the data kind of unpaired labelled rows",
    ("core/data/registry.py", "kto"): "the data kind of unpaired labelled rows",
    ("core/data/loading.py", "kto"): "the data kind of unpaired labelled rows",
    ("core/data/example.py", "kto"): "the data kind of unpaired labelled rows",
    ("core/specs.py", "kto"): "the data kind of unpaired labelled rows",
    ("plugins/stages/reward_model.py", "full"): "reward_model_type's value (LLaMA-Factory's): a whole model",
    ("plugins/stages/reward_model.py", "lora"): "reward_model_type's value (LLaMA-Factory's): an rm adapter",
    ("plugins/stages/reward_model.py", "accuracy"): "a metric's name",
    ("plugins/stages/ppo.py", "full"): "reward_model_type's value (LLaMA-Factory's): a whole model",
    ("plugins/stages/ppo.py", "lora"): "reward_model_type's value (LLaMA-Factory's): an rm adapter",
    ("plugins/stages/_ppo_rewards.py", "lora"): "reward_model_type's value (LLaMA-Factory's): an rm adapter",
    ("plugins/engines/vllm.py", "default"): "the adapter name vLLM's LoRARequest is given",
    ("plugins/engines/vllm.py", "length"): "a finish reason",
    ("plugins/engines/sglang.py", "length"): "a finish reason",
    ("plugins/engines/huggingface.py", "length"): "a finish reason",
    ("plugins/methods/lora.py", "default"): "PEFT's adapter name",
    ("plugins/methods/lora.py", "pt"): "safetensors' framework argument",
    ("plugins/apps/export/weights.py", "pt"): "safetensors' framework argument",
    ("plugins/apps/webui/args.py", "sft"): "the Evaluate tab predicts with the sft stage, as LLaMA-Factory's web UI does",
    ("plugins/apps/tiny_model/cli.py", "llama3"): "a tiny-model family (the builder makes one per template family)",
    ("plugins/apps/tiny_model/cli.py", "qwen3"): "a tiny-model family",
    ("plugins/apps/tiny_model/cli.py", "mistral"): "a tiny-model family",
    ("plugins/apps/tiny_model/cli.py", "gemma"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "llama3"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/builder.py", "qwen3"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/builder.py", "mistral"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/builder.py", "gemma"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "qwen2_vl"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "qwen2_vl"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "qwen2_audio"): "a tiny-model family",
    ("plugins/apps/tiny_model/cli.py", "qwen2_omni"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "qwen2_omni"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/builder.py", "qwen2_audio"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "qwen3_vl"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "qwen3_vl"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "gemma3"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "gemma3"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "llava"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "llava"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "llava_next"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "llava_next"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "llava_next_llama3"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "llava_next_llama3"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "llava_next_yi"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "llava_next_yi"): "a tiny-model family and the template it is built for",
    ("plugins/apps/tiny_model/cli.py", "intern_vl"): "a tiny-model family",
    ("plugins/apps/tiny_model/builder.py", "intern_vl"): "a tiny-model family and the template it is built for",
    ("core/data/media.py", "pt"): "return_tensors='pt' (PyTorch tensors from the model's processor)",
    ("plugins/templates/_media.py", "pt"): "return_tensors='pt' (PyTorch tensors)",
    ("plugins/apps/export/exporter.py", "pt"): "return_tensors='pt' (PyTorch tensors)",
    ("plugins/apps/tiny_model/builder.py", "default"): "the tokenizer's default chat template",
}


def builtin_names() -> dict[str, set[str]]:
    """Plugin name -> the kinds that have a built-in plugin of that name."""
    manager = PluginManager(autoload=False)
    out: dict[str, set[str]] = defaultdict(set)
    # A command plugin's name is its verb, an ordinary word ('eval', 'export', 'api'); the capability
    # checks this scan guards against are decided for the other kinds.
    for kind in (k for k in KINDS if k != "command"):
        for entry in manager.entries(kind):
            if entry.record.builtin:
                out[entry.name].add(kind)
    return out


def _defaults_table_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "DEFAULT_SELECTIONS" for t in targets):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def scan() -> dict[tuple[str, str], list[str]]:
    """(file, literal) -> where it names a plugin of a kind its file does not own."""
    names = builtin_names()
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    files = sorted((REPO / "core").rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py"))
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        parts = rel.split("/")
        own = FAMILIES.get(parts[1]) if parts[0] == "plugins" and len(parts) > 2 else None
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _defaults_table_lines(tree) if rel == "plugins/__init__.py" else set()
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            kinds = names.get(node.value, set())
            if not kinds or node.lineno in skip or (own is not None and own in kinds):
                continue
            found[(rel, node.value)].append(f"{rel}:{node.lineno}: '{node.value}' is the name of a built-in "
                                            f"{' and '.join(sorted(kinds))} plugin")
    return found


def test_no_plugin_name_outside_the_plugin_that_owns_it():
    found = scan()
    unexplained = [line for key, lines in sorted(found.items()) if key not in NOT_PLUGIN_NAMES for line in lines]
    assert not unexplained, ("ask the spec instead of naming a plugin (or, for a word that is no plugin's name "
                             "there, add it to NOT_PLUGIN_NAMES with the reason):\n" + "\n".join(unexplained))


def test_the_list_of_look_alikes_is_current():
    found = scan()
    stale = sorted(key for key in NOT_PLUGIN_NAMES if key not in found)
    assert not stale, f"no longer in the tree, remove from NOT_PLUGIN_NAMES: {stale}"


def test_the_scan_finds_a_plugin_name_in_the_core(tmp_path, monkeypatch):
    """The scan is not vacuous: a core module comparing with a method's name is reported."""
    names = builtin_names()
    assert {"lora", "bitsandbytes", "dpo"} <= set(names)
    tree = ast.parse('if method in ("lora", "dora"):\n    pass\n')
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names]
    assert literals == ["lora", "dora"]


def test_plugin_families_import_no_other_plugin_module():
    """A plugin module imports the public API (tuneforge, tuneforge.plugin_helpers) and its own family's
    private helpers (``_common`` ...), never another plugin's module."""
    problems = []
    for family in FAMILIES:
        folder = REPO / "plugins" / family
        plugin_modules = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    imported = [node.module] if node.module else [a.name for a in node.names]
                    problems += [f"plugins/{family}/{path.name} imports plugin module {m}" for m in imported
                                 if m and m.split(".")[0] in plugin_modules and m.split(".")[0] != path.stem]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tuneforge.plugins."):
                    module = node.module.split(".")
                    if len(module) > 3 and module[2] in FAMILIES and (module[2] != family or not module[3].startswith("_")):
                        problems.append(f"plugins/{family}/{path.name} imports {node.module}")
    assert not problems, "\n".join(problems)
