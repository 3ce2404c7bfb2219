"""A stage may train on rows of its own kind (issue 15): ``StageSpec.data_kind`` is any name, and a
kind the core does not build comes with a ``DataKind`` on the spec saying how its rows are made. The
stage here is a third party's in all but packaging (registered like one, through extra_plugins)."""

from __future__ import annotations

import pytest

from tuneforge import DataKind, StageSpec, hookimpl
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import REPO

SEEN: list[int] = []


def last_reply_batch(batch, *, template, tokenizer, settings):
    """Supervised rows whose labels keep only the last 4 trained tokens of each reply."""
    from tuneforge.data.template import IGNORE_INDEX
    from tuneforge.data.tokenize import supervised_batch

    out = supervised_batch(batch, template=template, tokenizer=tokenizer, settings=settings)
    for labels in out["labels"]:
        trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        for i in trained[:-4]:
            labels[i] = IGNORE_INDEX
    SEEN.extend(sum(label != IGNORE_INDEX for label in labels) for labels in out["labels"])
    return out


def collator(pad_token_id, label_pad_token_id):
    from tuneforge.data.collator import PadCollator

    return PadCollator(pad_token_id, label_pad_token_id=label_pad_token_id)


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    return run_text_stage(ctx, "last_reply")


class LastReply:
    @hookimpl
    def tuneforge_stages(self):
        return [
            StageSpec(name="lastreply", description="Learn the last tokens of each reply.", run=run,
                      data_kind="last_reply", data=DataKind("supervised", last_reply_batch, collator)),
            StageSpec(name="nokind", description="Declares a kind and no way to build it.", run=run,
                      data_kind="mystery"),
        ]


def settings(tiny_model, tmp_path, **overrides):
    base = dict(model_name_or_path=str(tiny_model), template="llama3", dataset="alpaca_en_demo",
                dataset_dir=str(REPO / "data"), output_dir=str(tmp_path / "out"), cutoff_len=64, max_samples=4,
                per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, report_to="none",
                overwrite_output_dir=True, stage="lastreply", finetuning_type="lora")
    base.update(overrides)
    return [f"{k}={v}" for k, v in base.items()]


def manager():
    return PluginManager(autoload=False, extra_plugins=[("lastreply", LastReply())])


def test_a_stage_trains_on_rows_of_its_own_kind(tiny_model, tmp_path):
    from tuneforge.train.pipeline import run_training

    SEEN.clear()
    ctx = run_training(prepare(None, settings(tiny_model, tmp_path), manager=manager()))
    assert SEEN and all(0 < n <= 4 for n in SEEN)  # its featurizer built the rows the run trained on
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert ctx.extras["trainer"].state.global_step == 2


def test_a_kind_the_core_does_not_build_needs_a_data_kind_on_the_spec(tiny_model, tmp_path):
    with pytest.raises(ConfigError) as info:
        prepare(None, settings(tiny_model, tmp_path, stage="nokind"), manager=manager())
    assert "stage 'nokind'" in str(info.value) and "trains on 'mystery' rows" in str(info.value)
    assert "StageSpec.data" in str(info.value)


def test_rows_of_a_stage_own_kind_are_not_packed(tiny_model, tmp_path):
    with pytest.raises(ConfigError) as info:
        prepare(None, settings(tiny_model, tmp_path, packing=True), manager=manager())
    assert "packing: is not supported for 'last_reply' rows (stage lastreply)" in str(info.value)
