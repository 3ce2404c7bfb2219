"""The plugin-author docs stay true: every hook is documented with its real signature, and the
example plugin in docs/writing-plugins.md is the package the tests install and train with."""

from __future__ import annotations

import inspect
import re

import pytest

from tuneforge import hookspecs

from .conftest import REPO

DOCS = REPO / "docs"
NORMTUNE = REPO / "tests" / "plugin_packages" / "tuneforge-normtune"
HELLO = REPO / "tests" / "plugin_packages" / "tuneforge-hello"


def _hooks() -> dict[str, object]:
    return {name: fn for name, fn in vars(hookspecs).items()
            if name.startswith("tuneforge_") and callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")}


def _signature(name: str, fn) -> str:
    sig = inspect.signature(fn)
    params = ", ".join(sig.parameters)
    ret = sig.return_annotation
    ret = ret if isinstance(ret, str) else inspect.formatannotation(ret)
    return f"{name}({params}) -> {ret}"


def _sections(text: str) -> dict[str, str]:
    """Hook name -> the text of its `### ` section."""
    out = {}
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        block = re.split(r"^## ", block, flags=re.M)[0]
        found = re.match(r"`(tuneforge_\w+)\(", block)
        if found:
            out[found.group(1)] = block
    return out


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return re.findall(r"^```([^\n`]*)\n(.*?)^```\s*$", text, flags=re.M | re.S)


def test_the_hook_list_is_what_pluggy_sees():
    hooks = _hooks()
    assert set(hooks) >= set(hookspecs.REGISTRATION_HOOKS)
    assert {"tuneforge_detect_template", "tuneforge_model_ready", "tuneforge_run_end"} <= set(hooks)


@pytest.mark.parametrize("name", sorted(_hooks()))
def test_every_hook_is_documented_with_its_signature(name):
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    fn = _hooks()[name]
    heading = f"### `{_signature(name, fn)}`"
    assert heading in text.splitlines(), f"docs/hooks.md needs the heading line: {heading}"
    section = _sections(text)[name]
    # Each hook has an example implementing it with the same parameter names.
    params = ", ".join(inspect.signature(fn).parameters)
    assert f"def {name}({params}):" in section, f"docs/hooks.md: {name} needs an example"
    firstresult = getattr(fn, f"{hookspecs.PROJECT}_spec").get("firstresult", False)
    assert ("firstresult" in section) == firstresult, f"docs/hooks.md: {name} firstresult is {firstresult}"


def test_hooks_doc_names_no_hook_that_does_not_exist():
    hooks = set(_hooks())
    for path in (DOCS / "hooks.md", DOCS / "writing-plugins.md"):
        text = path.read_text(encoding="utf-8")
        mentioned = set(re.findall(r"\btuneforge_[a-z_]+\b", text)) - {"tuneforge_normtune", "tuneforge_hello"}
        assert mentioned - hooks == set(), f"{path.name} names hooks that do not exist"
        assert set(_sections(text)) <= hooks
    assert set(_sections((DOCS / "hooks.md").read_text(encoding="utf-8"))) == hooks


def _one_block(text: str, lang: str, *needles: str) -> str:
    found = [body for info, body in _code_blocks(text) if info.strip() == lang and all(n in body for n in needles)]
    assert len(found) == 1, f"expected one ```{lang} block containing {needles}, found {len(found)}"
    return found[0]


def test_writing_plugins_module_is_the_tested_package():
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    module = _one_block(text, "python", "def tuneforge_methods():", 'name="normtune"')
    assert module.strip() == (NORMTUNE / "tuneforge_normtune.py").read_text(encoding="utf-8").strip()


def test_writing_plugins_pyproject_is_the_tested_package():
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    pyproject = _one_block(text, "toml", "[project]", 'name = "tuneforge-normtune"')
    assert pyproject.strip() == (NORMTUNE / "pyproject.toml").read_text(encoding="utf-8").strip()


def test_writing_plugins_verb_example_is_the_tested_package():
    """The "Adding a verb" section shows tuneforge-hello, which test_third_party_plugins installs and runs."""
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    module = _one_block(text, "python", "def tuneforge_commands():", 'name="hello"')
    assert module.strip() == (HELLO / "tuneforge_hello.py").read_text(encoding="utf-8").strip()
    pyproject = _one_block(text, "toml", "[project]", 'name = "tuneforge-hello"')
    assert pyproject.strip() == (HELLO / "pyproject.toml").read_text(encoding="utf-8").strip()


def test_architecture_names_every_app_verb_and_plugin_family():
    """docs/architecture.md draws the layout: every plugins/ family and every app verb is in it."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    from tuneforge.cli import CORE_COMMANDS
    from tuneforge.plugin_manager import PluginManager

    families = sorted(p.name for p in (REPO / "plugins").iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert "apps" in families
    for folder in families:
        assert f"{folder}/" in text, folder
    for entry in PluginManager(autoload=False).entries("command"):
        assert entry.name in text, entry.name
    for verb in CORE_COMMANDS:
        assert verb in text, verb


def test_writing_plugins_covers_what_authors_need():
    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    from tuneforge.specs import KINDS, SPEC_TYPES

    for kind, cls in SPEC_TYPES.items():
        assert f"`{kind}`" in text and f"`{cls.__name__}`" in text, kind
        assert KINDS[kind] is None or f"`{KINDS[kind]}`" in text
    for hook in hookspecs.REGISTRATION_HOOKS:
        assert f"`{hook}`" in text
    for needle in ("TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD=1", "TUNEFORGE_DISABLE_PLUGINS", "disable_plugins:",
                   "--disable-plugin", "Requirement(", "unavailable_reason", "validate",
                   "PluginManager(autoload=False, extra_plugins=", '[project.entry-points.tuneforge]'):
        assert needle in text, needle
