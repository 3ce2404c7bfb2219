"""The registry: built-ins register like third parties; unknown, duplicate, blocked and missing plugins."""

from __future__ import annotations

import types

import pytest

from tuneforge import MethodSpec, Requirement, hookimpl
from tuneforge.errors import PluginError
from tuneforge.plugin_manager import PluginManager


def plugin_module(name: str, *specs) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def tuneforge_methods():
        return list(specs)

    module.tuneforge_methods = tuneforge_methods
    return module


def test_every_builtin_module_registers_through_pluggy(manager):
    from tuneforge.plugins import BUILTIN_MODULES

    registered = {name.split(":", 1)[1] for name, _ in manager.pm.list_name_plugin()}
    assert set(BUILTIN_MODULES) <= registered
    for kind in ("loader", "method", "template", "format", "stage"):
        assert manager.names(kind), f"no built-in {kind}"


def test_unknown_name_lists_choices(manager):
    with pytest.raises(PluginError) as info:
        manager.method("lorra")
    assert str(info.value) == "unknown finetuning_type 'lorra'; did you mean 'lora'? available: adam_mini, apollo, badam, dora, freeze, full, galore, lora, muon, oft, pissa, rslora"


def test_duplicate_name_names_every_provider():
    dup = plugin_module("dup", MethodSpec(name="lora", description="again"))
    manager = PluginManager(autoload=False, extra_plugins=[("my-dup", dup)])
    with pytest.raises(PluginError) as info:
        manager.method("lora")
    message = str(info.value)
    assert "duplicate method name 'lora'" in message
    assert "tuneforge 0.1.0 (built-in)" in message and "entry point 'my-dup'" in message
    assert manager.duplicate_entries()[0].name == "lora"


def test_missing_optional_dependency_is_listed_with_pip_command():
    spec = MethodSpec(name="needs-x", description="d", requires=(Requirement("no_such_module_abc", "pip install 'tuneforge[x]'"),))
    manager = PluginManager(autoload=False, extra_plugins=[("x", plugin_module("x", spec))])
    entry = manager.entry("method", "needs-x")
    assert entry.status == "unavailable: missing no_such_module_abc (pip install 'tuneforge[x]')"
    with pytest.raises(PluginError, match=r"pip install 'tuneforge\[x\]'"):
        manager.method("needs-x")
    assert manager.method("lora").name == "lora"  # the others still work


def test_unavailable_reason_from_the_plugin():
    spec = MethodSpec(name="gpu-only", description="d", unavailable_reason=lambda: "needs a CUDA GPU")
    manager = PluginManager(autoload=False, extra_plugins=[("g", plugin_module("g", spec))])
    assert manager.entry("method", "gpu-only").status == "unavailable: needs a CUDA GPU"


def test_plugin_whose_hook_raises_is_an_error_not_a_crash():
    module = types.ModuleType("bad")

    @hookimpl
    def tuneforge_methods():
        raise RuntimeError("boom")

    module.tuneforge_methods = tuneforge_methods
    manager = PluginManager(autoload=False, extra_plugins=[("bad", module)])
    record = next(r for r in manager.records if r.name == "bad")
    assert record.status == "error" and "boom" in record.error
    assert manager.method("full").name == "full"


@pytest.mark.parametrize("blocked", ["lora", "method:lora"])
def test_block_list_disables_a_name(blocked):
    manager = PluginManager(autoload=False, blocked=[blocked])
    assert manager.entry("method", "lora").status == "disabled"
    with pytest.raises(PluginError, match="disabled"):
        manager.method("lora")


def test_block_list_disables_a_whole_module():
    manager = PluginManager(autoload=False, blocked=["tuneforge.plugins.methods.lora"])
    assert "lora" not in manager.names("method")
    assert next(r for r in manager.records if r.name == "tuneforge.plugins.methods.lora").status == "disabled"


def test_third_party_detection_hook_answers_before_builtins():
    module = types.ModuleType("detect")

    @hookimpl
    def tuneforge_detect_template(tokenizer):
        return "chatml"

    module.tuneforge_detect_template = tuneforge_detect_template
    manager = PluginManager(autoload=False, extra_plugins=[("d", module)])
    tokenizer = types.SimpleNamespace(chat_template="<|start_header_id|> <|eot_id|>")
    assert manager.hook.tuneforge_detect_template(tokenizer=tokenizer) == "chatml"
    assert PluginManager(autoload=False).hook.tuneforge_detect_template(tokenizer=tokenizer) == "llama3"
