"""The CLI as a user meets it: fast start-up without torch, listing, show, check, version, env."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ANCHOR, run_cli

HEAVY = ("torch", "transformers", "peft", "trl", "datasets")


def test_help_and_plugins_do_not_import_torch():
    """What keeps `--help` and `plugins` fast is that they import no heavy library; the time itself
    is measured by bench scripts, not asserted here (a loaded CI machine would make it flaky)."""
    code = (
        "import sys, io, contextlib, time\n"
        "from tuneforge.cli.main import main\n"
        "t = time.perf_counter()\n"
        "for argv in (['--help'], ['plugins'], ['plugins', '--json'], ['show', 'method', 'lora']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "print(time.perf_counter() - t)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "", f"imported: {out[1]}"


def test_plugins_listing_and_json():
    result = run_cli("plugins")
    assert result.returncode == 0
    assert any(line.split()[:2] == ["lora", "method"] and line.endswith("active") for line in result.stdout.splitlines())
    rows = json.loads(run_cli("plugins", "--json", "--kind", "stage").stdout)
    assert {r["name"] for r in rows} >= {"sft", "pt"} and all(r["kind"] == "stage" for r in rows)
    assert all(r["provider"] == "tuneforge" for r in rows)


def test_show_prints_keys_with_types_defaults_and_docs():
    out = run_cli("show", "method", "lora").stdout
    assert "method 'lora' from tuneforge" in out
    assert "lora_rank: int = 8" in out and "Rank of the LoRA matrices." in out
    result = run_cli("show", "method", "lorra")
    assert result.returncode == 2 and "did you mean 'lora'?" in result.stderr


def test_check_prints_the_plan(tiny_model):
    result = run_cli("check", "examples/train_lora/llama3_lora_sft.yaml", f"model_name_or_path={tiny_model}", f"dataset_dir={ANCHOR}")
    assert result.returncode == 0, result.stderr
    for line in ("method     lora  [tuneforge", "template   llama3", "stage      sft", "dataset    identity", "config OK"):
        assert line in result.stdout


def test_check_errors_have_no_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: m\nfinetuning_type: lorra\nlora_rnak: 8\nlearning_rate: fast\n")
    result = run_cli("check", str(cfg))
    assert result.returncode == 2
    assert result.stderr.startswith("error: the config has 3 problems:") and "Traceback" not in result.stderr


def test_version_and_env():
    assert run_cli("version").stdout.strip() == "tuneforge 0.1.0"
    out = run_cli("env").stdout
    for pkg in ("python:", "torch: 2.13", "transformers:", "peft:", "trl:", "datasets:", "accelerate:", "device: cpu"):
        assert pkg in out


# --- verbs added by plugins (tuneforge_commands) ----------------------------------------------------


def _command_plugin(name: str, *specs):
    import types

    from tuneforge import hookimpl

    module = types.ModuleType(name)

    @hookimpl
    def tuneforge_commands():
        return list(specs)

    module.tuneforge_commands = tuneforge_commands
    return module


def _run(parser, argv):
    args, extra = parser.parse_known_args(argv)
    return args.handler(args)


def test_a_verb_from_two_plugins_is_an_error_naming_both_and_other_verbs_work():
    import pytest

    from tuneforge import CommandSpec
    from tuneforge.cli.main import build_parser
    from tuneforge.errors import PluginError
    from tuneforge.plugin_manager import PluginManager

    seen = []
    one = CommandSpec(name="greet", description="one", run=lambda args: seen.append("one"))
    two = CommandSpec(name="greet", description="two", run=lambda args: seen.append("two"))
    other = CommandSpec(name="other", description="fine", run=lambda args: seen.append("other"))
    manager = PluginManager(autoload=False, extra_plugins=[("first", _command_plugin("a", one, other)),
                                                            ("second", _command_plugin("b", two))])
    parser = build_parser(manager)
    with pytest.raises(PluginError) as info:
        _run(parser, ["greet"])
    assert str(info.value) == ("duplicate command name 'greet', provided by (in process) (entry point 'first') "
                               "and (in process) (entry point 'second')")
    assert str(info.value) in manager.errors()
    _run(parser, ["other"])
    assert seen == ["other"]
    assert _run(parser, ["version"]) in (0, None)


def test_a_verb_whose_register_raises_is_broken_and_breaks_nothing_else(capsys):
    import pytest

    from tuneforge import CommandSpec
    from tuneforge.cli.main import build_parser
    from tuneforge.errors import PluginError
    from tuneforge.plugin_manager import PluginManager

    def register(parser):
        parser.add_argument("config")
        raise ImportError("register imported something it should not")

    bad = CommandSpec(name="bad", description="d", register=register, run=lambda args: 0)
    good = CommandSpec(name="good", description="works", register=lambda p: p.add_argument("--x", type=int),
                       run=lambda args: args.x)
    manager = PluginManager(autoload=False, extra_plugins=[("bad-plugin", _command_plugin("bad", bad)),
                                                            ("good-plugin", _command_plugin("good", good))])
    parser = build_parser(manager)
    assert manager.entry("command", "bad").status == (
        "broken: ImportError: register imported something it should not (in register())")
    with pytest.raises(PluginError, match=r"command 'bad' from \(in process\) \(entry point 'bad-plugin'\) is broken: "
                                          r"ImportError: register imported something it should not"):
        _run(parser, ["bad", "whatever", "--flag"])
    assert _run(parser, ["good", "--x", "7"]) == 7
    parser.print_help()
    out = " ".join(capsys.readouterr().out.split())
    assert "bad (broken: `tuneforge bad` says why)" in out and "good works" in out


def test_a_plugin_cannot_replace_a_core_verb():
    from tuneforge import CommandSpec
    from tuneforge.cli.main import build_parser
    from tuneforge.plugin_manager import PluginManager

    fake = CommandSpec(name="train", description="not the real one", run=lambda args: "fake")
    manager = PluginManager(autoload=False, extra_plugins=[("fake", _command_plugin("fake", fake))])
    assert manager.entry("command", "train").status.startswith(
        "error: command 'train' from (in process) (entry point 'fake') has the name of a core verb")
    assert manager.errors() == [manager.entry("command", "train").status.removeprefix("error: ")]
    parser = build_parser(manager)
    args, _ = parser.parse_known_args(["train", "c.yaml"])
    assert args.handler.__module__ == "tuneforge.cli.train"


def test_the_apps_are_plugin_verbs():
    from tuneforge.cli import CORE_COMMANDS
    from tuneforge.plugin_manager import PluginManager

    manager = PluginManager(autoload=False)
    verbs = {e.name: e.record.name for e in manager.entries("command")}
    assert verbs == {
        "api": "tuneforge.plugins.apps.api.cli", "chat": "tuneforge.plugins.apps.chat.cli",
        "eval": "tuneforge.plugins.apps.benchmark.cli", "export": "tuneforge.plugins.apps.export.cli",
        "tiny-model": "tuneforge.plugins.apps.tiny_model.cli", "webui": "tuneforge.plugins.apps.webui.cli",
        "expand": "tuneforge.plugins.apps.expand.cli",
    }
    assert set(CORE_COMMANDS) == {"train", "check", "plan", "data", "plugins", "show", "env", "version"}
    assert all(e.status == "active" for e in manager.entries("command"))
