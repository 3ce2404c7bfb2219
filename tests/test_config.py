"""Config parsing and validation: LLaMA-Factory configs parse unchanged; every problem is reported at once."""

from __future__ import annotations

import dataclasses
import os

import pytest

from tuneforge.config.hf_training_args import HF_TRAINING_ARGS
from tuneforge.config.validate import coerce
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.specs import ConfigKey

from .conftest import ANCHOR, REPO

LF_EXAMPLE = REPO / "examples" / "train_lora" / "llama3_lora_sft.yaml"


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_llamafactory_example_parses_unchanged_but_for_paths(tiny_model, manager):
    prepared = prepare(LF_EXAMPLE, [f"model_name_or_path={tiny_model}", f"dataset_dir={ANCHOR}"], manager=manager)
    c = prepared.config
    assert c.stage == "sft" and c.finetuning_type == "lora" and c.lora_rank == 8 and c.lora_target == "all"
    assert c.learning_rate == pytest.approx(1e-4) and c.num_train_epochs == 3.0 and c.bf16 is True
    assert c.ddp_timeout == 180000000 and c.warmup_ratio == 0.1 and c.resume_from_checkpoint is None
    assert c.hf_training_args()["lr_scheduler_type"] == "cosine"
    rows = {role: name for role, name, _ in prepared.plan.describe() if role != "dataset"}
    assert rows["method"] == "lora" and rows["template"] == "llama3" and rows["stage"] == "sft"
    assert [d.attr.name for d in prepared.plan.datasets] == ["identity", "alpaca_en_demo"]
    # LLaMA-Factory's example sets nothing we ignore
    assert prepared.warnings == []
    # a key accepted for compatibility but not acted on is said out loud
    prepared = prepare(LF_EXAMPLE, [f"model_name_or_path={tiny_model}", f"dataset_dir={ANCHOR}", "use_unsloth=true"], manager=manager)
    assert any(w.startswith("use_unsloth") and "has no effect" in w for w in prepared.warnings)


def test_three_mistakes_reported_in_one_message(tmp_path, manager):
    path = write(tmp_path, "model_name_or_path: m\nfinetuning_type: lorra\nlora_rnak: 8\nlearning_rate: fast\n")
    with pytest.raises(ConfigError) as info:
        prepare(path, manager=manager)
    message = str(info.value)
    assert "3 problems" in message
    assert f"{path}:3: lora_rnak: unknown key; did you mean 'lora_rank'?" in message
    assert f"{path}:4: learning_rate: expected int | float, got str 'fast'" in message
    assert "unknown finetuning_type 'lorra'; did you mean 'lora'? available: adam_mini, apollo, badam, dora, freeze, full, galore, lora, muon, oft, pissa, rslora" in message
    # file order
    assert message.index("finetuning_type") < message.index("lora_rnak") < message.index("learning_rate")


def test_overrides_win_and_are_typed(tmp_path, manager):
    path = write(tmp_path, "model_name_or_path: m\nlora_rank: 8\n")
    prepared = prepare(path, ["lora_rank=16", "learning_rate=1e-4", "bf16=true"], manager=manager)
    assert prepared.config.lora_rank == 16
    assert prepared.config.learning_rate == pytest.approx(1e-4)  # YAML reads 1e-4 as a string
    assert prepared.config.where("lora_rank") == "command line"
    with pytest.raises(ConfigError, match="override 'oops' is not key=value"):
        prepare(path, ["oops"], manager=manager)


def test_yaml_syntax_error_names_the_line(tmp_path, manager):
    path = write(tmp_path, "model_name_or_path: m\nlora_rank: [8\nstage: sft\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: not valid YAML"):
        prepare(path, manager=manager)


def test_missing_model_and_unknown_dataset(tmp_path, manager):
    path = write(tmp_path, f"dataset: identiy\ndataset_dir: {ANCHOR}\n")
    with pytest.raises(ConfigError) as info:
        prepare(path, manager=manager)
    message = str(info.value)
    assert "model_name_or_path: is required" in message
    assert "unknown dataset 'identiy'" in message and "did you mean 'identity'" in message


def test_choices_are_enforced(tmp_path, manager):
    path = write(tmp_path, "model_name_or_path: m\ninfer_dtype: float64\n")
    with pytest.raises(ConfigError, match="'float64' is not one of: auto, float16, bfloat16, float32"):
        prepare(path, manager=manager)


def test_plugin_validation_reports_incompatible_settings(tmp_path, manager):
    path = write(tmp_path, "model_name_or_path: m\nfinetuning_type: lora\nuse_dora: true\npissa_convert: true\n")
    with pytest.raises(ConfigError, match="pissa_convert converts a PiSSA adapter"):
        prepare(path, manager=manager)


def test_keys_of_an_unused_plugin_warn(tmp_path, manager):
    path = write(tmp_path, "model_name_or_path: m\nfinetuning_type: full\nlora_rank: 8\n")
    prepared = prepare(path, manager=manager)
    assert any("lora_rank" in w and "method 'lora'" in w for w in prepared.warnings)


def test_direct_data_file_needs_no_dataset_info(tmp_path, manager):
    data = tmp_path / "mine.json"
    data.write_text('[{"instruction": "hi", "input": "", "output": "hello"}]')
    prepared = prepare(write(tmp_path, f"model_name_or_path: m\ndataset: {data}\n"), manager=manager)
    assert prepared.plan.datasets[0].attr.path == str(data)


@pytest.mark.parametrize(
    "type_,value,expected",
    [(float, 1, 1.0), (float, "3e-5", 3e-5), (int, "8", 8), (int, 8.0, 8), (bool, "true", True), ((str, list), "a,b", "a,b")],
)
def test_coercion_accepts(type_, value, expected):
    assert coerce(ConfigKey("k", type_), value) == (expected, None)


@pytest.mark.parametrize("type_,value", [(int, "eight"), (bool, 1), (int, 1.5), (str, 3), (dict, "x")])
def test_coercion_rejects(type_, value):
    assert coerce(ConfigKey("k", type_), value)[1] is not None


def test_hf_training_args_table_matches_installed_transformers():
    from transformers import Seq2SeqTrainingArguments

    fields = {f.name for f in dataclasses.fields(Seq2SeqTrainingArguments) if f.init}
    assert set(HF_TRAINING_ARGS) == fields, (
        f"added in transformers: {sorted(fields - set(HF_TRAINING_ARGS))}; "
        f"dropped: {sorted(set(HF_TRAINING_ARGS) - fields)}"
    )


# --- adapter_name_or_path is checked at `check`, before any model loads ----------------------------------------------


@pytest.fixture(scope="module")
def good_adapter(tiny_model, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter") / "lora"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)
    return folder


def _damaged_adapters(good, tiny_model, root):
    """(what the config names, what the message must say) for each way an adapter folder goes wrong."""
    import shutil

    def copy(name):
        target = root / name
        shutil.copytree(good, target)
        return target

    (root / "adapter.safetensors").write_bytes(b"")
    (root / "empty").mkdir()
    no_weights = copy("no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    cut = copy("cut")
    weights = cut / "adapter_model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size - 10)
    bad_config = copy("bad-config")
    (bad_config / "adapter_config.json").write_text('{"r": 4,')
    return [
        (root / "nope", f"{root / 'nope'} does not exist (relative paths are read from"),
        (root / "adapter.safetensors", f"{root / 'adapter.safetensors'} is a file; point adapter_name_or_path at the output_dir"),
        (root / "empty", f"{root / 'empty'} has no adapter_config.json, so it is not an adapter folder"),
        (tiny_model, f"{tiny_model} has no adapter_config.json: it holds a full model, not an adapter; set model_name_or_path to it"),
        (no_weights, f"{no_weights} has adapter_config.json but no adapter weights (adapter_model.safetensors or adapter_model.bin)"),
        (cut, f"{cut}: adapter_model.safetensors is cut short: {size - 10} bytes, but its header says {size}; copy the adapter again"),
        (bad_config, f"{bad_config}: adapter_config.json is not valid JSON"),
        ("someone/not-cached-adapter", "someone/not-cached-adapter is not a local folder, and HF_HUB_OFFLINE=1 keeps it from being downloaded"),
    ]


def test_every_damaged_adapter_is_named_at_check_with_the_fix(tiny_model, good_adapter, tmp_path, manager):
    base = [f"model_name_or_path={tiny_model}", "template=llama3", "finetuning_type=lora"]
    assert prepare(None, [*base, f"adapter_name_or_path={good_adapter}"], manager=manager).config.adapter_name_or_path
    for adapter, expected in _damaged_adapters(good_adapter, tiny_model, tmp_path):
        with pytest.raises(ConfigError) as error:
            prepare(None, [*base, f"adapter_name_or_path={good_adapter},{adapter}"], manager=manager)
        message = str(error.value)
        assert f"adapter_name_or_path: {expected}" in message, message
        assert message.count("adapter_name_or_path:") == 1, message  # the good one of the list is not named


def test_check_chat_and_export_stop_on_a_truncated_adapter_with_one_message(tiny_model, good_adapter, tmp_path):
    import shutil

    from .conftest import run_cli

    cut = tmp_path / "cut"
    shutil.copytree(good_adapter, cut)
    os.truncate(cut / "adapter_model.safetensors", 100)
    config = tmp_path / "chat.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\ntemplate: llama3\nfinetuning_type: lora\nadapter_name_or_path: {cut}\n")
    for verb in (["check"], ["chat", "--query", "hi"], ["export", f"export_dir={tmp_path / 'merged'}"]):
        args = [verb[0], str(config), *verb[1:]]
        result = run_cli(*args)
        assert result.returncode == 2, (verb, result.stdout[-2000:], result.stderr[-2000:])
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert f"{config}:4: adapter_name_or_path: {cut}: adapter_model.safetensors is cut short" in result.stderr, result.stderr
    assert not (tmp_path / "merged").exists()


def test_hugging_face_enums_match_installed_transformers():
    from transformers.trainer_utils import HubStrategy, IntervalStrategy, SaveStrategy, SchedulerType
    from transformers.training_args import OptimizerNames, trainer_log_levels

    from tuneforge.config import hf_training_args as hf

    assert set(hf.SCHEDULER_TYPES) == {s.value for s in SchedulerType}
    assert set(hf.OPTIMIZER_NAMES) == {o.value for o in OptimizerNames}
    assert set(hf.INTERVAL_STRATEGIES) == {s.value for s in IntervalStrategy}
    assert set(hf.SAVE_STRATEGIES) == {s.value for s in SaveStrategy}
    assert set(hf.HUB_STRATEGIES) == {s.value for s in HubStrategy}
    assert set(hf.LOG_LEVELS) == set(trainer_log_levels)
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert set(hf.REPORTERS) == set(INTEGRATION_TO_CALLBACK) | {"all", "none"}
    assert set(hf.HF_KEY_LIMITS) <= set(HF_TRAINING_ARGS)


def test_limits_declared_on_a_plugin_key_are_enforced(tmp_path):
    """A plugin's ConfigKey(min=..., path=..., excludes=...) is checked like the core's own keys."""
    from tuneforge import hookimpl
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.specs import MethodSpec

    class Plugin:
        @hookimpl
        def tuneforge_methods(self):
            return [MethodSpec(name="ranged", description="test", keys=(
                ConfigKey("ranged_alpha", float, 0.5, "a fraction", min=0, max=1, max_open=True),
                ConfigKey("ranged_folder", str, None, "a folder", path="dir"),
                ConfigKey("ranged_fast", bool, False, "fast", excludes=("ranged_slow",)),
                ConfigKey("ranged_slow", bool, False, "slow"),
            ), apply=lambda *a, **k: None)]

    manager = PluginManager(autoload=False, extra_plugins=[("ranged", Plugin())])
    path = write(tmp_path, "model_name_or_path: m\nfinetuning_type: ranged\nranged_alpha: 1\nranged_folder: /no/such\n"
                           "ranged_fast: true\nranged_slow: true\n")
    with pytest.raises(ConfigError) as info:
        prepare(path, manager=manager)
    message = str(info.value)
    assert f"{path}:3: ranged_alpha: must be >= 0 and < 1, got 1" in message
    assert f"{path}:4: ranged_folder: /no/such is not a folder (it does not exist)" in message
    assert "ranged_fast" in message and "ranged_slow" in message and "cannot both be set" in message


def test_range_text_and_problem():
    key = ConfigKey("max_steps", int, -1, min=1, special=(-1,))
    assert key.range_text() == ">= 1 (or -1)"
    assert key.range_problem(-1) is None and key.range_problem(5) is None
    assert key.range_problem(0) == "must be >= 1 (or -1), got 0"
    assert ConfigKey("lr", float, min=0, min_open=True).range_problem(float("nan")) == "must be a number, got nan"
