"""Config parsing and validation: LLaMA-Factory configs parse unchanged; every problem is reported at once."""

from __future__ import annotations

import dataclasses

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
