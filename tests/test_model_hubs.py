"""Models from ModelScope / Modelers (USE_MODELSCOPE_HUB=1 / USE_OPENMIND_HUB=1), as LLaMA-Factory
loads them, tested offline: a hub model id resolves to the folder the hub's own cache keeps it in (laid
out here as each hub lays it out), which then loads like any local model; an id in no cache asks for
the hub's package by name."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import REPO

MODEL_ID = "Qwen/Qwen2.5-0.5B-Instruct"
IDS = torch.tensor([[5, 17, 42, 99, 7]])


def cache_copy(tiny_model, folder):
    """The tiny model's files in ``folder``, as a hub download leaves them."""
    folder.mkdir(parents=True)
    for item in tiny_model.iterdir():
        if item.is_file():
            (folder / item.name).write_bytes(item.read_bytes())
    return folder


def settings(model, **extra) -> list[str]:
    base = dict(model_name_or_path=model, template="llama3", stage="sft", finetuning_type="lora",
                dataset="identity", dataset_dir=str(REPO / "data"), output_dir="unused", **extra)
    return [f"{k}={v}" for k, v in base.items()]


def resolved(model, **extra):
    return prepare(None, settings(model, **extra), manager=PluginManager(autoload=False)).config


def loads_like(folder, tiny_model):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return torch.equal(AutoModelForCausalLM.from_pretrained(folder)(IDS).logits,
                           AutoModelForCausalLM.from_pretrained(tiny_model)(IDS).logits)


@pytest.mark.parametrize("layout", ["models/Qwen/Qwen2___5-0___5B-Instruct", "Qwen/Qwen2___5-0___5B-Instruct"])
def test_modelscope_model_id_resolves_to_its_cache(tiny_model, tmp_path, monkeypatch, layout):
    folder = cache_copy(tiny_model, tmp_path / "ms" / layout)  # recent modelscope: models/OWNER/NAME; older: OWNER/NAME
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    assert resolved(MODEL_ID).model_name_or_path == MODEL_ID  # without USE_MODELSCOPE_HUB it stays a HF id
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    config = resolved(MODEL_ID, ms_hub_token="not-needed-offline")
    assert config.model_name_or_path == str(folder)
    assert loads_like(config.model_name_or_path, tiny_model)


def test_a_local_folder_wins_over_the_hub(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty"))
    assert resolved(str(tiny_model)).model_name_or_path == str(tiny_model)


def test_openmind_model_id_resolves_to_its_snapshot(tiny_model, tmp_path, monkeypatch):
    repo = tmp_path / "om" / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct"
    cache_copy(tiny_model, repo / "snapshots" / "0123abcd")
    other = cache_copy(tiny_model, repo / "snapshots" / "4567ef01")
    (other / "config.json").unlink()  # an unfinished snapshot is no model
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("OPENMIND_HOME", str(tmp_path / "om"))
    monkeypatch.setenv("USE_OPENMIND_HUB", "1")
    config = resolved(MODEL_ID, om_hub_token="not-needed-offline")
    assert config.model_name_or_path == str(repo / "snapshots" / "0123abcd")
    assert loads_like(config.model_name_or_path, tiny_model)


@pytest.mark.parametrize("hub, variable, package, module", [
    ("ModelScope", "USE_MODELSCOPE_HUB", "modelscope", "modelscope"),
    ("Modelers", "USE_OPENMIND_HUB", "openmind", "openmind"),
])
def test_an_uncached_model_names_the_package_to_download_it(tmp_path, monkeypatch, hub, variable, package, module):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{package} is installed: it would try the network")
    monkeypatch.setenv(variable, "1")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("OPENMIND_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=rf"model_name_or_path: {MODEL_ID} is on {hub} \({variable}=1\) and not in its "
                                          rf"cache; install its client to download it: pip install {package}"):
        resolved(MODEL_ID)
