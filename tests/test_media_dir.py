"""`media_dir`: the media paths of a dataset are relative to it (default: `dataset_dir`), as in LLaMA-Factory."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import DataError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.context import RunContext
from tuneforge.train.model import load_tokenizer


@pytest.fixture(scope="module")
def vl_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_vl", "tiny")


def layout(tmp_path):
    """dataset_dir holds the rows; the image lives in a separate media folder."""
    from PIL import Image

    data, media = tmp_path / "data", tmp_path / "media"
    (media / "img").mkdir(parents=True)
    data.mkdir()
    Image.new("RGB", (40, 40), (0, 200, 90)).save(media / "img" / "0.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Green."}],
             "images": ["img/0.png"]}]
    (data / "pics.json").write_text(json.dumps(rows))
    entry = {"file_name": "pics.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
    (data / "dataset_info.json").write_text(json.dumps({"pics": entry}))
    return data, media


def load(model, data, cache, **extra):
    from tuneforge.data.loading import load_examples

    values = dict(model_name_or_path=str(model), template="qwen2_vl", dataset_dir=str(data), dataset="pics",
                  cutoff_len=512, **extra)
    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False))
    assert "media_dir" not in " ".join(str(w) for w in prepared.warnings), prepared.warnings
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    return load_examples(ctx, ctx.plan.datasets)


def test_media_paths_are_relative_to_media_dir(vl_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data, media = layout(tmp_path)
    [result] = load(vl_model, data, tmp_path, media_dir=str(media))
    assert result.examples[0]["images"] == [str((media / "img" / "0.png").resolve())]


def test_without_media_dir_they_are_relative_to_dataset_dir_and_a_missing_file_is_named(vl_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    data, _ = layout(tmp_path)
    with pytest.raises(DataError) as error:
        load(vl_model, data, tmp_path)
    assert "img/0.png" in str(error.value) and "pics.json" in str(error.value)
