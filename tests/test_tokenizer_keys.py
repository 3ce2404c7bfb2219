"""model_max_length (LLaMA-Factory's, derived from cutoff_len when unset): the tokenizer's declared
maximum is enlarged to it, never shrunk, and the saved tokenizer carries it."""

from __future__ import annotations

import json

import pytest

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import REPO


def tokenizer(tiny_model, **settings):
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_tokenizer

    values = dict(model_name_or_path=str(tiny_model), template="llama3", stage="sft", finetuning_type="lora",
                  dataset="identity", dataset_dir=str(REPO / "data"), output_dir="unused", **settings)
    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    return ctx.tokenizer


@pytest.mark.parametrize("settings, expected", [
    ({"cutoff_len": 64}, None),  # shorter than the tokenizer's own maximum: unchanged
    ({"cutoff_len": 3000}, 3000),  # derived from cutoff_len
    ({"cutoff_len": 64, "model_max_length": 8192}, 8192),
])
def test_model_max_length_enlarges_the_tokenizer(tiny_model, tmp_path, settings, expected):
    own = json.loads((tiny_model / "tokenizer_config.json").read_text())["model_max_length"]
    assert own == 2048
    loaded = tokenizer(tiny_model, **settings)
    assert loaded.model_max_length == (expected or own)
    loaded.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == (expected or own)
