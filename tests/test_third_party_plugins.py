"""Third-party plugins as users install them: real packages under tests/plugin_packages, installed
with pip into a private folder and found through their `tuneforge` entry points by a CLI subprocess.

- tuneforge-normtune: a working method plugin with its own keys and validation;
- tuneforge-broken: its module raises ImportError at import;
- tuneforge-dup: registers a method named `lora`, which the built-ins already provide;
- tuneforge-misspelled: its hook is `tuneforge_method` (one letter short);
- tuneforge-raisingvalidate: a method whose validate() raises TypeError unless its key is set;
- tuneforge-hello: adds a verb, `tuneforge hello`, through the tuneforge_commands hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGES = REPO / "tests" / "plugin_packages"
NAMES = ("tuneforge-normtune", "tuneforge-broken", "tuneforge-dup", "tuneforge-misspelled",
         "tuneforge-raisingvalidate", "tuneforge-hello")


def _pip_install(source: Path, target: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    src = target.parent / f"{source.name}-src"
    shutil.copytree(source, src)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--no-cache-dir", "--quiet", "--target", str(target), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install {source.name} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Package name -> the folder pip installed it into (one folder per package)."""
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        target = root / "site"
        _pip_install(PACKAGES / name, target)
        assert list(target.glob("*.dist-info")), f"{name}: no dist-info in {target}"
        out[name] = target
    return out


def cli(*args: str, plugins: list[Path] = (), env: dict | None = None, timeout: int = 300):
    """`tuneforge ARGS` in a subprocess that sees exactly the given plugin folders (autoload on)."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD", "TUNEFORGE_DISABLE_PLUGINS", "PYTHONPATH")}
    full_env["HF_HUB_OFFLINE"] = "1"
    full_env["HF_DATASETS_OFFLINE"] = "1"
    if plugins:
        full_env["PYTHONPATH"] = os.pathsep.join(str(p) for p in plugins)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", *args],
        capture_output=True, text=True, env=full_env, cwd=REPO, timeout=timeout,
    )


def _rows(stdout: str) -> dict[str, list[str]]:
    """`tuneforge plugins` table: name -> the split columns of its first row."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        if not line.strip() or line.startswith("error:"):
            continue
        rows.setdefault(line.split()[0], line.split(None, 4))
    return rows


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A six-row alpaca dataset named `tiny_alpaca`, with its dataset_info.json."""
    folder = tmp_path_factory.mktemp("data")
    rows = [
        {"instruction": "Say hello.", "input": "", "output": "Hello!"},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "What is the capital of Italy?", "input": "", "output": "Rome."},
        {"instruction": "Reverse the word.", "input": "abc", "output": "cba"},
    ]
    (folder / "tiny_alpaca.json").write_text(json.dumps(rows, indent=2))
    (folder / "dataset_info.json").write_text(json.dumps({"tiny_alpaca": {"file_name": "tiny_alpaca.json"}}))
    return folder


def _config(path: Path, **values) -> Path:
    base = {"model_name_or_path": "some/model", "stage": "sft", "do_train": True, "template": "llama3",
            "output_dir": str(path.parent / "out")}
    base.update(values)
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    return path


# --- a working plugin ----------------------------------------------------------------------------


def test_normtune_is_listed_with_its_provider(installed):
    result = cli("plugins", plugins=[installed["tuneforge-normtune"]])
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert rows["normtune"] == ["normtune", "method", "0.3.0", "tuneforge-normtune", "active"]
    assert rows["lora"][:2] == ["lora", "method"] and rows["lora"][3] == "tuneforge"

    result = cli("plugins", "--json", "--kind", "method", plugins=[installed["tuneforge-normtune"]])
    assert result.returncode == 0, result.stderr
    entry = next(r for r in json.loads(result.stdout) if r["name"] == "normtune")
    assert entry == {
        "name": "normtune", "kind": "method", "version": "0.3.0", "provider": "tuneforge-normtune",
        "plugin": "normtune", "builtin": False, "status": "active",
        "description": "Train only the normalisation weights (every parameter whose name contains 'norm').",
    }


def test_show_normtune_prints_its_keys(installed):
    result = cli("show", "method", "normtune", plugins=[installed["tuneforge-normtune"]])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "method 'normtune' from tuneforge-normtune 0.3.0 (entry point 'normtune')" in out
    assert "status: active" in out
    assert "normtune_include_embeddings: bool = False" in out
    assert "Also train the input embeddings (embed_tokens)." in out
    assert "normtune_layers: int = None" in out
    assert "Train the norms of the last n decoder layers only" in out


def test_normtune_keys_are_validated_by_check(installed, tmp_path, data_dir):
    site = [installed["tuneforge-normtune"]]
    cfg = _config(tmp_path / "ok.yaml", finetuning_type="normtune", normtune_layers=1, dataset="tiny_alpaca",
                  dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=site)
    assert result.returncode == 0, result.stderr
    assert "normtune  [tuneforge-normtune 0.3.0 (entry point 'normtune')]" in result.stdout

    bad = _config(tmp_path / "bad.yaml", finetuning_type="normtune", normtune_layers=0, normtune_include_embeddings="yes",
                  dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(bad), plugins=site)
    assert result.returncode == 2
    assert "normtune_include_embeddings: expected bool, got str 'yes'" in result.stderr

    bad = _config(tmp_path / "bad2.yaml", finetuning_type="normtune", normtune_layers=0, dataset="tiny_alpaca",
                  dataset_dir=str(data_dir))
    result = cli("check", str(bad), plugins=site)
    assert result.returncode == 2
    assert "method normtune: normtune_layers must be a positive number of layers, not 0" in result.stderr

    # Without the package the key is unknown and the method name is not found.
    result = cli("check", str(cfg))
    assert result.returncode == 2
    assert "normtune_layers: unknown key" in result.stderr and "unknown finetuning_type 'normtune'" in result.stderr


# --- a plugin that cannot import -----------------------------------------------------------------


def test_broken_plugin_is_listed_and_does_not_break_the_cli(installed, tmp_path, data_dir):
    site = [installed["tuneforge-broken"], installed["tuneforge-normtune"]]
    result = cli("plugins", plugins=site)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    broken = rows["broken"]
    assert broken[2:4] == ["0.1.0", "tuneforge-broken"]
    assert broken[4] == "broken: ModuleNotFoundError: No module named 'a_module_that_does_not_exist_xyz'"
    assert rows["normtune"][-1] == "active"
    for builtin in ("lora", "freeze", "full", "sft", "pt", "alpaca", "huggingface", "llama3"):
        assert builtin in rows, builtin

    rows = json.loads(cli("plugins", "--json", plugins=site).stdout)
    entry = next(r for r in rows if r["provider"] == "tuneforge-broken")
    assert entry["status"].startswith("broken: ModuleNotFoundError") and entry["version"] == "0.1.0"

    cfg = _config(tmp_path / "lora.yaml", finetuning_type="lora", dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=site)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout

    # A key nobody declares points at the plugin that failed to load.
    result = cli("check", str(cfg), "brokenplugin_option=1", plugins=site)
    assert result.returncode == 2
    assert "plugins that failed to load or are blocked may own it: broken" in result.stderr


# --- plugins with a bug: a misspelled hook, a validate() that raises -------------------------------


def test_misspelled_hook_and_raising_validate_are_listed_as_broken(installed, tmp_path, data_dir):
    site = [installed["tuneforge-misspelled"], installed["tuneforge-raisingvalidate"], installed["tuneforge-normtune"]]
    result = cli("plugins", plugins=site)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = _rows(result.stdout)
    assert rows["misspelled"][1:4] == ["?", "0.1.0", "tuneforge-misspelled"]
    assert rows["misspelled"][4] == ("broken: unknown hook 'tuneforge_method'; did you mean 'tuneforge_methods'? "
                                     "(hooks: docs/hooks.md)")
    assert rows["raisingvalidate"][:4] == ["raisingvalidate", "method", "0.2.0", "tuneforge-raisingvalidate"]
    assert rows["raisingvalidate"][4] == ("broken: TypeError: '>' not supported between instances of 'NoneType' and "
                                          "'int' (in validate())")
    assert rows["normtune"][-1] == "active" and rows["lora"][-1] == "active"

    by_name = {r["name"]: r for r in json.loads(cli("plugins", "--json", plugins=site).stdout)}
    assert by_name["misspelled"]["status"].startswith("broken: unknown hook 'tuneforge_method'")
    assert by_name["raisingvalidate"]["status"].startswith("broken: TypeError")

    # A config that uses neither passes; every other command works.
    cfg = _config(tmp_path / "lora.yaml", finetuning_type="lora", dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=site)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert cli("show", "method", "normtune", plugins=site).returncode == 0

    # A config that selects the buggy method gets one clear problem naming the plugin, no traceback.
    bad = _config(tmp_path / "bad.yaml", finetuning_type="raisingvalidate", dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(bad), plugins=site)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert ("method raisingvalidate: method 'raisingvalidate' from tuneforge-raisingvalidate 0.2.0 (entry point "
            "'raisingvalidate') is broken: TypeError: '>' not supported between instances of 'NoneType' and 'int' "
            "(in validate())") in result.stderr
    assert "--disable-plugin raisingvalidate" in result.stderr
    # Where its validate() does not raise, the plugin works as written.
    result = cli("check", str(bad), "raisingvalidate_limit=3", plugins=site)
    assert result.returncode == 0, result.stderr

    # The misspelled plugin's method does not exist; the error says which plugin may have meant it.
    result = cli("check", str(cfg), "finetuning_type=misspelled", plugins=site)
    assert result.returncode == 2
    assert "unknown finetuning_type 'misspelled'" in result.stderr
    assert "(broken or blocked plugins may provide it: misspelled)" in result.stderr


# --- a plugin that adds a verb -----------------------------------------------------------------------


def test_plugin_verb_runs_and_shows_in_help(installed):
    site = [installed["tuneforge-hello"]]
    result = cli("--help", plugins=site)
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout and "greet someone (a verb added by the tuneforge-hello plugin)" in " ".join(result.stdout.split())
    assert cli("--help").stdout.count("hello") == 0

    result = cli("hello", plugins=site)
    assert (result.returncode, result.stdout) == (0, "hello, world\n"), result.stderr
    result = cli("hello", "tuneforge", "--methods", plugins=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "hello, tuneforge"
    assert result.stdout.splitlines()[1].startswith("methods: adam_mini, apollo, badam, dora, freeze, full")
    result = cli("hello", " ", plugins=site)
    assert (result.returncode, result.stderr) == (2, "error: hello: NAME must not be empty\n")
    result = cli("hello", "--help", plugins=site)
    assert "--methods" in result.stdout and "who to greet" in result.stdout

    rows = _rows(cli("plugins", "--kind", "command", plugins=site).stdout)
    assert rows["hello"] == ["hello", "command", "0.1.0", "tuneforge-hello", "active"]
    assert rows["chat"][3] == "tuneforge"

    # Blocking the plugin removes the verb.
    result = cli("--disable-plugin", "hello", "hello", plugins=site)
    assert result.returncode == 2 and "invalid choice: 'hello'" in result.stderr
    result = cli("hello", plugins=site, env={"TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 2 and "invalid choice: 'hello'" in result.stderr


# --- two plugins with one name -------------------------------------------------------------------


def test_duplicate_name_is_an_error_naming_both_providers(installed, tmp_path, data_dir):
    site = [installed["tuneforge-dup"]]
    result = cli("plugins", plugins=site)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "duplicate method name 'lora'" in errors[0]
    assert "tuneforge 0.1.0 (built-in)" in errors[0]
    assert "tuneforge-dup 0.1.0 (entry point 'dup')" in errors[0]

    cfg = _config(tmp_path / "lora.yaml", finetuning_type="lora", dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=site)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "finetuning_type: duplicate method name 'lora'" in result.stderr
    assert "tuneforge 0.1.0 (built-in)" in result.stderr and "tuneforge-dup 0.1.0" in result.stderr

    # Other methods are unaffected, and blocking the clashing plugin resolves the clash.
    result = cli("check", str(cfg), "finetuning_type=full", plugins=site)
    assert result.returncode == 0, result.stderr
    result = cli("--disable-plugin", "dup", "check", str(cfg), plugins=site)
    assert result.returncode == 0, result.stderr
    assert "method     lora  [tuneforge 0.1.0 (built-in)]" in result.stdout


def test_duplicate_message_format_in_process():
    from tuneforge import MethodSpec, hookimpl
    from tuneforge.errors import PluginError
    from tuneforge.plugin_manager import PluginManager

    module = types.ModuleType("my_dup_plugin")

    @hookimpl
    def tuneforge_methods():
        return [MethodSpec(name="lora", description="another lora")]

    module.tuneforge_methods = tuneforge_methods
    manager = PluginManager(autoload=False, extra_plugins=[("x", module)])
    [entry] = manager.duplicate_entries()
    message = entry.status.removeprefix("error: ")
    assert entry.status.startswith("error: ")
    assert message.startswith("duplicate method name 'lora', provided by tuneforge 0.1.0 (built-in) and (in process)")
    assert message.endswith("(entry point 'x')")
    with pytest.raises(PluginError) as info:
        manager.method("lora")
    assert str(info.value) == message
    # The first provider keeps the name in the listing; the clash is recorded on it.
    assert entry.record.builtin and [d.record.name for d in entry.duplicates] == ["x"]
    assert manager.method("freeze").name == "freeze"


# --- turning plugins off -------------------------------------------------------------------------


def test_autoload_can_be_turned_off(installed):
    site = [installed["tuneforge-normtune"]]
    result = cli("plugins", plugins=site, env={"TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert "normtune" not in rows and "lora" in rows
    result = cli("show", "method", "normtune", plugins=site, env={"TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 2 and "unknown finetuning_type 'normtune'" in result.stderr


def test_disable_plugin_option_and_env(installed):
    site = [installed["tuneforge-normtune"]]
    for args, env in (
        (("--disable-plugin", "normtune", "plugins"), None),
        (("plugins",), {"TUNEFORGE_DISABLE_PLUGINS": "normtune"}),
        (("--disable-plugin", "tuneforge-normtune", "plugins"), None),
    ):
        result = cli(*args, plugins=site, env=env)
        assert result.returncode == 0, result.stderr
        rows = _rows(result.stdout)
        assert rows["normtune"][1:] == ["?", "0.3.0", "tuneforge-normtune", "disabled"], (args, env)
        assert rows["lora"][-1] == "active"


def test_disable_plugins_key_blocks_a_selected_method(installed, tmp_path, data_dir):
    site = [installed["tuneforge-normtune"]]
    cfg = _config(tmp_path / "c.yaml", finetuning_type="normtune", disable_plugins="normtune",
                  dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=site)
    assert result.returncode == 2
    assert "finetuning_type: " in result.stderr
    assert "normtune" in result.stderr and "disabled" in result.stderr


def test_disable_plugins_key_with_kind_and_name(installed, tmp_path, data_dir):
    # kind:name blocks one spec; the module still loads, so its keys stay known.
    site = [installed["tuneforge-normtune"]]
    cfg = _config(tmp_path / "c.yaml", finetuning_type="normtune", disable_plugins="method:normtune",
                  normtune_layers=1, dataset="tiny_alpaca", dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=site)
    assert result.returncode == 2
    assert "the config has 1 problem:" in result.stderr
    assert "finetuning_type: method 'normtune' is disabled" in result.stderr
    result = cli("plugins", "--kind", "method", plugins=site, env={"TUNEFORGE_DISABLE_PLUGINS": "method:normtune"})
    assert _rows(result.stdout)["normtune"] == ["normtune", "method", "0.3.0", "tuneforge-normtune", "disabled"]


# --- a real run ----------------------------------------------------------------------------------


def test_normtune_trains_only_norm_weights(installed, tiny_model, tmp_path, data_dir):
    import torch

    out = tmp_path / "out"
    cfg = _config(
        tmp_path / "train.yaml",
        model_name_or_path=str(tiny_model), finetuning_type="normtune", dataset="tiny_alpaca",
        dataset_dir=str(data_dir), cutoff_len=64, max_steps=3, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=1, report_to="none", output_dir=str(out), save_strategy="no",
    )
    result = cli("train", str(cfg), plugins=[installed["tuneforge-normtune"]], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "method     normtune  [tuneforge-normtune 0.3.0" in result.stdout

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert set(tuned) == set(base)
    norms = [name for name in base if "norm" in name]
    assert norms and len(norms) < len(base)
    trainable = sum(base[name].numel() for name in norms)
    assert f"trainable params: {trainable:,} of " in result.stdout
    for name, weight in base.items():
        if "norm" in name:
            assert not torch.equal(tuned[name], weight), f"{name} did not train"
        else:
            assert torch.equal(tuned[name], weight), f"{name} changed but is not a norm weight"


# --- capabilities from the spec alone (issue 15) ---------------------------------------------------------------


def test_normtune_is_planned_from_its_spec(installed, tiny_model, tmp_path):
    """`tuneforge plan` counts normtune's trainable parameters with the rule on its spec, not "not modelled"."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = _config(tmp_path / "plan.yaml", model_name_or_path=str(tiny_model), finetuning_type="normtune",
                  normtune_layers=1, cutoff_len=64)
    result = cli("plan", str(cfg), "--json", "--processes", "1", plugins=[installed["tuneforge-normtune"]])
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    expected = sum(p.numel() for n, p in model.named_parameters()
                   if "norm" in n and (".layers." not in n or f".layers.{layers - 1}." in n))
    assert data["method"] == "normtune" and data["trainable"] == expected < data["parameters"]
    assert not any("not modelled" in note for note in data["notes"]), data["notes"]
    # its trainable parameters train in fp32 beside the frozen rest: the plan's weights say so
    assert f"{expected:,} trainable x 4 B" in data["how"]["weights"]


def test_normtune_is_refused_on_quantized_weights_from_its_spec(installed, tmp_path, data_dir):
    """normtune's own validate no longer checks quantization_bit: its spec says it trains the base weights."""
    cfg = _config(tmp_path / "q.yaml", finetuning_type="normtune", quantization_bit=4, dataset="tiny_alpaca",
                  dataset_dir=str(data_dir))
    result = cli("check", str(cfg), plugins=[installed["tuneforge-normtune"]])
    assert result.returncode == 2
    assert ("method normtune: finetuning_type: normtune updates the base weights, which are quantized "
            "(quantization_bit: 4 with bitsandbytes) and cannot be trained; train adapters on them instead "
            "(QLoRA: finetuning_type: lora), or remove quantization_bit") in result.stderr


@pytest.fixture(scope="module")
def rowscale_site(tmp_path_factory) -> Path:
    from .conftest import pip_install_plugin_package

    return pip_install_plugin_package("tuneforge-rowscale", tmp_path_factory.mktemp("tuneforge-rowscale") / "site")


@pytest.fixture(scope="module")
def rowscale_adapter(rowscale_site, tiny_model, tmp_path_factory, data_dir) -> Path:
    """A rowscale adapter trained for 4 steps by `tuneforge train`."""
    out = tmp_path_factory.mktemp("rowscale") / "out"
    cfg = _config(out.parent / "train.yaml", model_name_or_path=str(tiny_model), finetuning_type="rowscale",
                  dataset="tiny_alpaca", dataset_dir=str(data_dir), cutoff_len=64, max_steps=4,
                  per_device_train_batch_size=2, learning_rate=5e-2, report_to="none", output_dir=str(out),
                  save_strategy="no")
    result = cli("train", str(cfg), plugins=[rowscale_site], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_third_party_adapter_method_trains_and_saves_only_its_adapter(rowscale_adapter, tiny_model):
    from safetensors.torch import load_file

    assert (rowscale_adapter / "rowscale_config.json").is_file()
    assert not list(rowscale_adapter.glob("model*.safetensors"))  # the adapter only, not the model
    scales = load_file(str(rowscale_adapter / "rowscale.safetensors"))
    assert scales and any(t.count_nonzero() for t in scales.values())


@pytest.mark.slow
def test_a_third_party_adapter_is_merged_and_verified_by_export(rowscale_site, rowscale_adapter, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    export_dir = tmp_path / "merged"
    cfg = _config(tmp_path / "export.yaml", model_name_or_path=str(tiny_model), finetuning_type="rowscale",
                  adapter_name_or_path=str(rowscale_adapter), export_dir=str(export_dir))
    result = cli("export", str(cfg), plugins=[rowscale_site], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verification passed" in result.stdout and "merged adapter" in result.stdout
    report = json.loads((export_dir / "export_verification.json").read_text())
    assert report["failures"] == [] and report["weights"]["changed"] > 0
    assert report["logits_vs_base_max_abs_diff"] > 0  # the base logits came from the adapter switched off

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).state_dict()
    from safetensors.torch import load_file

    for module, scale in load_file(str(rowscale_adapter / "rowscale.safetensors")).items():
        expected = base[f"{module}.weight"] * (1 + scale)[:, None]
        assert torch.allclose(merged[f"{module}.weight"], expected, atol=1e-6), module


@pytest.mark.slow
def test_an_untrained_third_party_adapter_is_refused_by_export(rowscale_site, rowscale_adapter, tiny_model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    untrained = tmp_path / "untrained"
    shutil.copytree(rowscale_adapter, untrained)
    save_file({k: v * 0 for k, v in load_file(str(untrained / "rowscale.safetensors")).items()},
              str(untrained / "rowscale.safetensors"))
    cfg = _config(tmp_path / "export.yaml", model_name_or_path=str(tiny_model), finetuning_type="rowscale",
                  adapter_name_or_path=str(untrained), export_dir=str(tmp_path / "merged"))
    result = cli("export", str(cfg), plugins=[rowscale_site])
    assert result.returncode != 0
    assert f"adapter {untrained} is empty: every one of its" in result.stderr + result.stdout


@pytest.mark.slow
def test_a_third_party_adapter_is_the_reference_model_in_dpo(rowscale_site, rowscale_adapter, tiny_model, tmp_path):
    """ref_model + ref_model_adapters: the method whose adapter spec recognises the folder loads it (the
    policy trains with LoRA; nothing in the core or the dpo stage names rowscale)."""
    from .conftest import REPO as repo

    cfg = _config(tmp_path / "dpo.yaml", model_name_or_path=str(tiny_model), stage="dpo", finetuning_type="lora",
                  dataset="dpo_en_demo", dataset_dir=str(repo / "data"), cutoff_len=64, max_samples=4,
                  per_device_train_batch_size=2, max_steps=1, report_to="none", output_dir=str(tmp_path / "out"),
                  save_strategy="no", ref_model=str(tiny_model), ref_model_adapters=str(rowscale_adapter))
    result = cli("train", str(cfg), plugins=[rowscale_site], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"reference model: {tiny_model} + adapter(s) {rowscale_adapter} (ref_model, frozen)" in result.stdout


def test_a_third_party_adapter_method_is_planned_from_its_spec(rowscale_site, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    cfg = _config(tmp_path / "plan.yaml", model_name_or_path=str(tiny_model), finetuning_type="rowscale")
    result = cli("plan", str(cfg), "--json", "--processes", "1", plugins=[rowscale_site])
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    head = model.get_output_embeddings()
    rows = sum(m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    assert data["trainable"] == rows and "adapter x 4 B" in data["how"]["weights"]  # the base stays as loaded


@pytest.mark.slow
def test_a_third_party_adapter_policy_is_its_own_reference_in_dpo(rowscale_site, tiny_model, tmp_path):
    """finetuning_type: rowscale in dpo: the reference is the policy with its adapter switched off
    (AdapterSpec.disabled), no second copy of the model."""
    from .conftest import REPO as repo

    cfg = _config(tmp_path / "dpo.yaml", model_name_or_path=str(tiny_model), stage="dpo", finetuning_type="rowscale",
                  dataset="dpo_en_demo", dataset_dir=str(repo / "data"), cutoff_len=64, max_samples=4,
                  per_device_train_batch_size=2, max_steps=2, learning_rate=5e-2, logging_steps=1, report_to="none",
                  output_dir=str(tmp_path / "out"), save_strategy="no")
    result = cli("train", str(cfg), plugins=[rowscale_site], env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "reference model: the policy with its adapter disabled (no second copy)" in result.stdout
    logs = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    first = next(r for r in logs if "loss" in r)
    # at step 1 the adapter is the identity, so policy and reference agree: DPO's loss is log 2
    assert abs(first["loss"] - 0.6931) < 1e-3, first
    assert (tmp_path / "out" / "rowscale_config.json").is_file()
