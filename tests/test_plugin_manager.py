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
    assert record.status == "broken"
    assert record.error == "RuntimeError: boom (in tuneforge_methods())"
    assert manager.method("full").name == "full"


def test_a_plugin_that_raises_in_one_hook_contributes_nothing():
    """Specs handed over by one hook are dropped when another hook of the same plugin raises."""

    class Half:
        @hookimpl
        def tuneforge_methods(self):
            return [MethodSpec(name="half-method", description="d")]

        @hookimpl
        def tuneforge_reward_functions(self):
            raise ValueError("no rewards today")

    manager = PluginManager(autoload=False, extra_plugins=[("half", Half())])
    assert "half-method" not in manager.names("method")
    assert next(r for r in manager.records if r.name == "half").error == (
        "ValueError: no rewards today (in tuneforge_reward_functions())")
    assert manager.pm.get_plugin("(in process):half") is None  # its other hooks are not called either


def test_wrong_spec_type_is_broken():
    from tuneforge import QuantizerSpec

    manager = PluginManager(autoload=False, extra_plugins=[("w", plugin_module("w", QuantizerSpec(name="q", description="d")))])
    record = next(r for r in manager.records if r.name == "w")
    assert record.status == "broken"
    assert record.error == "tuneforge_methods() returned QuantizerSpec 'q'; it must return MethodSpec objects"
    assert "q" not in manager.names("quantizer")


def test_each_spec_keeps_its_provider():
    """Specs are collected through pluggy, yet each one is attributed to the plugin that returned it."""
    a = plugin_module("a", MethodSpec(name="from-a", description="d"))
    b = plugin_module("b", MethodSpec(name="from-b", description="d"), MethodSpec(name="also-b", description="d"))
    manager = PluginManager(autoload=False, extra_plugins=[("plug-a", a), ("plug-b", b)])
    assert {n: manager.entry("method", n).record.name for n in ("from-a", "from-b", "also-b")} == {
        "from-a": "plug-a", "from-b": "plug-b", "also-b": "plug-b"}
    assert manager.entry("method", "lora").record.name == "tuneforge.plugins.methods.lora"


@pytest.mark.parametrize("marked", [True, False])
def test_misspelled_hook_is_broken_with_did_you_mean(marked):
    module = types.ModuleType("typo")

    def tuneforge_method():
        return [MethodSpec(name="typo-method", description="d")]

    module.tuneforge_method = hookimpl(tuneforge_method) if marked else tuneforge_method
    manager = PluginManager(autoload=False, extra_plugins=[("typo", module)])
    record = next(r for r in manager.records if r.name == "typo")
    assert record.status == "broken"
    assert record.error == ("unknown hook 'tuneforge_method'; did you mean 'tuneforge_methods'? (hooks: docs/hooks.md)")
    assert "typo-method" not in manager.names("method")
    assert [name for name, _ in manager.pm.list_name_plugin() if "typo" in name] == []
    assert manager.method("lora").name == "lora"


def test_unknown_hook_behind_specname_is_caught_by_pluggy():
    """A marked implementation whose specname names no hook: pluggy's check_pending() reports it."""
    module = types.ModuleType("specname")

    @hookimpl(specname="tuneforge_templates")
    def my_templates():
        return []

    module.my_templates = my_templates
    manager = PluginManager(autoload=False, extra_plugins=[("specname", module)])
    record = next(r for r in manager.records if r.name == "specname")
    assert record.status == "broken"
    assert record.error.startswith("PluginValidationError: unknown hook 'tuneforge_templates'")
    assert manager.pm.get_plugin("(in process):specname") is None


def test_unmarked_hook_function_is_broken():
    module = types.ModuleType("unmarked")
    module.tuneforge_methods = lambda: [MethodSpec(name="never-seen", description="d")]
    manager = PluginManager(autoload=False, extra_plugins=[("unmarked", module)])
    record = next(r for r in manager.records if r.name == "unmarked")
    assert record.status == "broken"
    assert "'tuneforge_methods' is not marked @hookimpl" in record.error


def test_unavailable_reason_that_raises_is_broken_not_a_crash():
    def reason():
        raise OSError("cannot read /proc/driver/nvidia")

    spec = MethodSpec(name="flaky", description="d", unavailable_reason=reason)
    manager = PluginManager(autoload=False, extra_plugins=[("flaky-plugin", plugin_module("f", spec))])
    entry = manager.entry("method", "flaky")
    assert entry.status == "broken: OSError: cannot read /proc/driver/nvidia (in unavailable_reason())"
    with pytest.raises(PluginError) as info:
        manager.method("flaky")
    assert str(info.value).startswith(
        "method 'flaky' from (in process) (entry point 'flaky-plugin') is broken: OSError: cannot read /proc/driver/nvidia")
    assert "--disable-plugin flaky-plugin" in str(info.value)


def test_validate_that_raises_becomes_one_problem_naming_the_plugin():
    def validate(config, plan):
        return [] if config.ok else ["not ok"]

    spec = MethodSpec(name="strict", description="d", validate=validate)
    manager = PluginManager(autoload=False, extra_plugins=[("strict-plugin", plugin_module("s", spec))])
    entry = manager.entry("method", "strict")
    assert manager.validate(entry, types.SimpleNamespace(ok=False), None) == ["not ok"]
    assert entry.status == "active"
    [problem] = manager.validate(entry, object(), None)
    assert problem.startswith("method 'strict' from (in process) (entry point 'strict-plugin') is broken: "
                              "AttributeError: 'object' object has no attribute 'ok' (in validate())")
    assert entry.status.startswith("broken: AttributeError")


def test_one_key_declared_two_ways_is_an_error_naming_both():
    from tuneforge import ConfigKey

    mine = MethodSpec(name="mine", description="d", keys=(ConfigKey("lora_rank", str, "8", "a rank as text"),))
    manager = PluginManager(autoload=False, extra_plugins=[("clash", plugin_module("c", mine))])
    message = manager.key_conflicts["lora_rank"]
    assert message.startswith("config key 'lora_rank' is declared differently by method ")
    assert "from tuneforge 0.1.0 (built-in) (int = 8)" in message
    assert "method 'mine' from (in process) (entry point 'clash') (str = '8')" in message
    assert message in manager.errors()
    with pytest.raises(PluginError, match="declared differently"):
        manager.method("mine")
    assert manager.method("full").name == "full"
    # A config that sets the key is refused with the same message; one that does not is fine.
    from tuneforge.config.validate import validate_values

    _, problems = validate_values({"lora_rank": 8}, {"lora_rank": "c.yaml:3"}, manager)
    assert [(p.key, p.message, p.where) for p in problems] == [("lora_rank", message, "c.yaml:3")]
    assert validate_values({"learning_rate": 1e-4}, {}, manager)[1] == []


def test_one_key_declared_identically_is_fine():
    from tuneforge import ConfigKey

    same = MethodSpec(name="same", description="d", keys=(ConfigKey("lora_rank", int, 8, "my own doc"),))
    manager = PluginManager(autoload=False, extra_plugins=[("same", plugin_module("s", same))])
    assert manager.key_conflicts == {} and manager.errors() == []
    assert manager.method("same").name == "same"


def test_builtins_declare_every_shared_key_one_way():
    assert PluginManager(autoload=False).errors() == []


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
