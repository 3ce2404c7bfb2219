"""LLaMA-Factory's Qwen3-VL example chain, run as its README runs it, on the tiny qwen3_vl (issue 17):
train_lora/qwen3vl_lora_sft.yaml (2 steps) -> merge_lora/qwen3vl_lora_sft.yaml (tuneforge export,
verified on an image prompt) -> inference/qwen3vl.yaml on the export with a picture. The configs are
LLaMA-Factory's own files; only the hub model is swapped for the tiny one (and the data folder)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .test_lf_conformance import lf

pytestmark = pytest.mark.skipif(lf.available() is not None, reason=str(lf.available()))

PICTURE = lf.ANCHOR / "mllm_demo_data" / "1.jpg"


@pytest.fixture(autouse=True)
def one_thread_private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prepare(rel: str, overrides: list[str], inference: bool = False):
    return prepare(lf.EXAMPLES / rel, overrides, manager=PluginManager(autoload=False), inference=inference)


def _reply(prepared) -> tuple[list[int], object]:
    from tuneforge.chat.engine import engine_for

    engine = engine_for(prepared)
    messages = [{"role": "user", "content": "<image>Who are they?", "images": [str(PICTURE)]}]
    extra = engine._media_kwargs(messages, torch.tensor([engine.encode(messages)]))
    assert "pixel_values" in extra  # the picture reaches generate
    [reply] = engine.generate(messages)
    return engine.tokenizer(reply.text, add_special_tokens=False)["input_ids"], reply


def test_qwen3vl_lora_sft_then_merge_lora_export_then_inference_with_an_image(tmp_path):
    from tuneforge.plugins.apps.export.exporter import run_export
    from tuneforge.train.pipeline import run_training

    model = str(lf.tiny_model("qwen3_vl"))
    train_over = [o for o in lf.TRAIN_OVERRIDES if not o.startswith("max_steps")] + ["max_steps=2", "save_strategy='no'"]
    with lf.lf_root() as root:
        old = os.getcwd()
        os.chdir(root)
        try:
            # 1. train: LLaMA-Factory's config (mllm_demo mixed with identity and alpaca_en_demo), output in saves/...
            prepared = _prepare("train_lora/qwen3vl_lora_sft.yaml",
                                [f"model_name_or_path={model}", f"dataset_dir={lf.ANCHOR}", *train_over])
            assert prepared.config.template == "qwen3_vl_nothink" and prepared.config.lora_target == "all"
            run_training(prepared)
            adapter = root / "saves" / "qwen3-vl-4b" / "lora" / "sft"
            from safetensors import safe_open

            with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
                keys = list(weights.keys())
            assert any("language_model" in k for k in keys) and not [k for k in keys if ".visual." in k]
            logs = [json.loads(line) for line in (adapter / "trainer_log.jsonl").read_text().splitlines()]
            assert [r["current_steps"] for r in logs if "loss" in r] == [1, 2]

            # 2. merge_lora: the config's adapter_name_or_path is the folder step 1 wrote
            report = run_export(_prepare("merge_lora/qwen3vl_lora_sft.yaml", [f"model_name_or_path={model}"],
                                         inference=True))
            merged = root / "saves" / "qwen3_vl_sft_merged"
            assert report["reload_class"] == "AutoModelForImageTextToText"
            assert report["image_processor_matches_training"] is True
            assert report["chat_template_matches_training"] is True
            assert report["image_prompt_logits_vs_adapter_max_abs_diff"] <= report["tolerance"]
            assert report["logits_vs_base_max_abs_diff"] > 0  # the adapter was really merged
            assert (merged / "preprocessor_config.json").is_file()

            # 3. inference: the export answers about the picture as base + adapter does (greedy)
            chat = ["max_new_tokens=4", "do_sample=false"]
            on_export, reply = _reply(_prepare("inference/qwen3vl.yaml", [f"model_name_or_path={merged}", *chat],
                                               inference=True))
            with_adapter, _ = _reply(_prepare("inference/qwen3vl.yaml", [f"model_name_or_path={model}",
                                                                         f"adapter_name_or_path={adapter}", *chat],
                                              inference=True))
            assert reply.completion_tokens > 0 and on_export == with_adapter
        finally:
            os.chdir(old)


def test_qwen3vl_lora_dpo_trains_on_an_rlhf_v_layout_copy(tmp_path):
    """train_lora/qwen3vl_lora_dpo.yaml as it is, but for its dataset: rlhf_v is on the hub (offline here),
    so the same layout (a ranking sharegpt set with an images column) on the mllm_demo pictures."""
    from tuneforge.train.pipeline import run_training

    from .test_vision_use import picture_pairs

    model = str(lf.tiny_model("qwen3_vl"))
    data = picture_pairs(tmp_path / "data")
    with lf.lf_root() as root:
        old = os.getcwd()
        os.chdir(root)
        try:
            prepared = _prepare("train_lora/qwen3vl_lora_dpo.yaml",
                                [f"model_name_or_path={model}", "dataset=pairs", f"dataset_dir={data}",
                                 f"output_dir={tmp_path / 'dpo'}", *lf.TRAIN_OVERRIDES, "save_strategy='no'"])
            assert prepared.config.stage == "dpo" and prepared.config.template == "qwen3_vl_nothink"
            run_training(prepared)
        finally:
            os.chdir(old)
    logs = [json.loads(line) for line in (tmp_path / "dpo" / "trainer_log.jsonl").read_text().splitlines()]
    rows = [r for r in logs if "loss" in r]
    assert len(rows) == 2 and all("rewards/margins" in r for r in rows), rows
