"""dataset_info.json resolution (LLaMA-Factory's schema) and the config checks of the data keys."""

from __future__ import annotations

import json

import pytest

from tuneforge.config.keys import DATA_KEYS
from tuneforge.data.registry import data_problems, resolve_datasets
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare

from .conftest import ANCHOR


def test_llamafactory_registry_resolves_file_and_hub_entries(monkeypatch):
    attrs, problems = resolve_datasets(["identity", "dpo_en_demo", "alpaca_en", "llava_1k_en", "starcoder_python", "adgen_eval"], ANCHOR)
    assert problems == []
    identity, dpo, alpaca_en, llava, starcoder, adgen = attrs
    assert (identity.source, identity.path, identity.formatting) == ("file", str(ANCHOR / "identity.json"), "alpaca")
    assert dpo.ranking and dpo.formatting == "sharegpt" and dpo.columns == {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    assert (alpaca_en.source, alpaca_en.path) == ("hf_hub", "llamafactory/alpaca_en")
    assert llava.subset == "en" and llava.tags["role_tag"] == "role"
    assert starcoder.folder == "python" and adgen.split == "validation"
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    (alpaca_en,), _ = resolve_datasets(["alpaca_en"], ANCHOR)
    assert (alpaca_en.source, alpaca_en.path) == ("ms_hub", "llamafactory/alpaca_en")


def test_registry_problems_are_all_reported(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "a": {"file_name": "a.json", "formating": "alpaca"},
        "b": {"file_name": "missing.json"},
        "c": {"file_name": "a.json", "ranking": "yes", "tags": {"role": "r"}},
        "d": {"formatting": "alpaca"},
    }))
    _, problems = resolve_datasets(["a", "b", "c", "d", "e"], tmp_path)
    text = "\n".join(map(str, problems))
    assert "unknown field 'formating'; did you mean 'formatting'?" in text
    assert "file_name 'missing.json' not found" in text
    assert "'ranking' must be bool, got str" in text
    assert "unknown tag 'role'" in text
    assert "needs one of file_name, hf_hub_url" in text
    assert "unknown dataset 'e'" in text


def test_a_data_file_named_directly_and_online_names(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    (direct,), problems = resolve_datasets([str(tmp_path / "rows.jsonl")], "data")
    assert problems == [] and direct.formatting is None and direct.path == str(tmp_path / "rows.jsonl")
    (relative,), _ = resolve_datasets(["rows.jsonl"], tmp_path)  # relative to dataset_dir
    assert relative.path == str(tmp_path / "rows.jsonl")
    (online,), _ = resolve_datasets(["org/name"], "ONLINE")
    assert (online.source, online.path) == ("hf_hub", "org/name")


def _config(manager, **values):
    args = ["model_name_or_path=m", "dataset=identity,alpaca_en_demo", f"dataset_dir={ANCHOR}", *[f"{k}={v}" for k, v in values.items()]]
    return prepare(None, args, manager=manager).config


def _check_problems(manager, **values) -> str:
    """`tuneforge check` reports the data problems with every other config problem."""
    try:
        _config(manager, **values)
    except ConfigError as exc:
        return str(exc)
    return ""


def test_data_key_checks(manager):
    assert "streaming: needs max_steps" in _check_problems(manager, streaming=True)
    assert data_problems(_config(manager, streaming=True, max_steps=10)) == []
    assert "must be non-negative and sum to 1" in _check_problems(manager, mix_strategy="interleave_over", interleave_probs="0.5,0.6")
    assert "only used with mix_strategy interleave_under or interleave_over" in _check_problems(manager, interleave_probs="0.5,0.5")
    assert "tokenized_path: cannot save or load tokenised data while streaming" in _check_problems(manager, streaming=True, max_steps=5, tokenized_path="x")
    assert data_problems(_config(manager, packing=True), "pairwise")
    with pytest.raises(ConfigError):
        _config(manager, mix_strategy="interleave")


def test_every_data_key_this_issue_covers_is_effective():
    effective = {k.name: k.effective for k in DATA_KEYS}
    for name in ("dataset", "eval_dataset", "dataset_dir", "cutoff_len", "train_on_prompt", "mask_history", "streaming",
                 "buffer_size", "mix_strategy", "interleave_probs", "overwrite_cache", "preprocessing_batch_size",
                 "preprocessing_num_workers", "max_samples", "val_size", "packing", "neat_packing", "enable_thinking",
                 "tokenized_path", "data_shared_file_system", "skip_bad_rows", "replace_placeholders", "default_system",
                 "ignore_pad_token_for_loss"):
        assert effective[name], name
