"""Methods on a vision-language model (issue 17): QLoRA (bitsandbytes 4-bit on the language model, the
vision tower and projector left unquantized), freeze tuning (the language model's last layers) and OFT
(the language model's linear layers), each a few steps of sft on LLaMA-Factory's mllm_demo with the
tiny qwen2_vl. The vision side's weights come out bit-identical."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge import Requirement
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

from .conftest import ANCHOR

VISION = ("visual",)  # Qwen2-VL's vision tower and its merger (projector) live under model.visual


@pytest.fixture(scope="module")
def vl_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_vl", "tiny")


@pytest.fixture(scope="module")
def vision_weights(vl_model):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(vl_model)
    return {k: v.clone() for k, v in model.state_dict().items() if ".visual." in f".{k}"}


@pytest.fixture(autouse=True)
def one_thread_private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sft(vl_model, tmp_path, **overrides):
    base = dict(model_name_or_path=str(vl_model), template="qwen2_vl", stage="sft", dataset="mllm_demo",
                dataset_dir=str(ANCHOR), output_dir=str(tmp_path / "out"), cutoff_len=1024, per_device_train_batch_size=2,
                max_steps=4, learning_rate=5e-3, logging_steps=1, report_to="none", disable_tqdm=True,
                save_strategy="'no'")
    base.update(overrides)
    ctx = run_training(prepare(None, [f"{k}={v}" for k, v in base.items()], manager=PluginManager(autoload=False)))
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines())
              if "loss" in r]
    return ctx.extras["trainer"].model, losses


def assert_vision_untouched(model, vision_weights):
    state = {k.replace("base_model.model.", "", 1): v for k, v in model.state_dict().items()}
    assert vision_weights
    for key, before in vision_weights.items():
        assert torch.equal(state[key], before), key


@pytest.mark.skipif(Requirement("bitsandbytes", "").missing(), reason="needs the quant extra: pip install 'tuneforge[quant]'")
def test_qlora_quantizes_the_language_model_only_and_trains(vl_model, vision_weights, tmp_path):
    import bitsandbytes as bnb

    model, losses = sft(vl_model, tmp_path, finetuning_type="lora", quantization_bit=4)
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    vision_linear = [m for n, m in model.named_modules() if ".visual." in n and isinstance(m, torch.nn.Linear)]
    assert quantized and all("language_model" in n for n in quantized), quantized
    assert vision_linear and not [m for m in vision_linear if isinstance(m, bnb.nn.Linear4bit)]
    assert not any(n.endswith("lm_head") for n in quantized)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable), trainable
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert_vision_untouched(model, vision_weights)


def test_freeze_trains_the_language_models_last_layers_and_leaves_the_vision_tower(vl_model, vision_weights, tmp_path):
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(vl_model).get_text_config().num_hidden_layers
    model, losses = sft(vl_model, tmp_path, finetuning_type="freeze", freeze_trainable_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"model.language_model.layers.{layers - 1}.") for n in trainable), trainable
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert_vision_untouched(model, vision_weights)


def test_oft_all_adapts_the_language_model_only(vl_model, vision_weights, tmp_path):
    """LLaMA-Factory's extras/oft/qwen2_5vl_oft_sft.yaml: oft_target all on a VLM (its vision tower has
    a Conv3d that PEFT's OFT cannot take)."""
    model, losses = sft(vl_model, tmp_path, finetuning_type="oft", oft_block_size=16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("oft_" in n and "language_model" in n for n in trainable), trainable
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert_vision_untouched(model, vision_weights)
