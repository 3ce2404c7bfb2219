"""Qwen2.5-Omni's thinker (issue 17, "video and audio"): LLaMA-Factory's mllm_video_audio_demo with and
without use_audio_in_video, on the tiny qwen2_omni model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from .conftest import ANCHOR
from .test_vision import make_ctx
from .multimodal import train_lora_sft

pytestmark = pytest.mark.usefixtures("private_cache")

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def omni_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_omni", "tiny")


def omni_features(model, dataset, **overrides):
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings

    ctx = make_ctx(model, ANCHOR, dataset=dataset, template="qwen2_omni", **overrides)
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in result.examples]})
    return ctx, result, features


def _reference_interleaving(grid, audio_count, second_per_grid):
    """transformers' own Qwen2_5OmniProcessor.replace_video_with_audio_token (it cannot be built here:
    its video processor needs torchvision), run on the attributes it reads."""
    import numpy as np
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor

    fake = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2), audio_bos_token="<|audio_bos|>",
                           audio_eos_token="<|audio_eos|>", video_token="<|VIDEO|>", audio_token="<|AUDIO|>")
    fake.get_chunked_index = lambda indices, per_chunk: Qwen2_5OmniProcessor.get_chunked_index(fake, indices, per_chunk)
    videos = {"video_grid_thw": [np.array(grid)], "video_second_per_grid": [second_per_grid]}
    audios = {"num_audio_tokens": [audio_count]}
    return Qwen2_5OmniProcessor.replace_video_with_audio_token(fake, videos, 0, audios, 0, position_id_per_seconds=25,
                                                               seconds_per_chunk=2.0)


@pytest.mark.parametrize("fps", ["2.0", "0.8"])
def test_use_audio_in_video_interleaves_as_the_omni_processor_does(omni_model, fps):
    from tuneforge.data.template import IGNORE_INDEX
    from tuneforge.plugins.templates._audio import audio_tokens
    from tuneforge.plugins.templates._video import VideoSettings, read_frames, video_patches

    ctx, result, features = omni_features(omni_model, "mllm_video_audio_demo", use_audio_in_video="true", video_fps=fps)
    assert len(result.examples) == len(features["input_ids"]) == 3
    handler = ctx.media
    for example, ids, labels in zip(result.examples, features["input_ids"], features["labels"]):
        grid = video_patches(read_frames(example["videos"][0], VideoSettings(fps=float(fps))), str(omni_model))[1]
        mask = handler._audio_features(example["audios"], str(omni_model))["attention_mask"][0]
        inner = _reference_interleaving(grid, audio_tokens(int(mask.sum())), 2 / float(fps))
        question = example["messages"][0]["content"].replace("<video><audio>", "")
        text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_bos|>{inner}<|vision_eos|>"
                f"{question}<|im_end|>\n<|im_start|>assistant\n{example['messages'][1]['content']}<|im_end|>\n")
        assert ids == ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
        media = {ctx.tokenizer.convert_tokens_to_ids(t) for t in ("<|VIDEO|>", "<|AUDIO|>")}
        assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i in media)


#: LLaMA-Factory's qwen2_omni default system prompt.
SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory "
          "and visual inputs, as well as generating text and speech.")


def test_without_use_audio_in_video_the_video_and_audio_are_apart(omni_model):
    ctx, _, features = omni_features(omni_model, "mllm_video_audio_demo")
    text = ctx.tokenizer.decode(features["input_ids"][0])
    assert "<|vision_bos|><|VIDEO|>" in text and "<|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|>" in text
    assert "<|AUDIO|><|VIDEO|>" not in text


@pytest.mark.parametrize("interleave", ["true", "false"])
def test_the_collator_feeds_video_and_sound_and_both_change_the_loss(omni_model, interleave):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.dataset import make_collator

    ctx, _, features = omni_features(omni_model, "mllm_video_audio_demo", use_audio_in_video=interleave)
    batch = make_collator(ctx, "supervised")([{k: features[k][i] for k in features} for i in range(2)])
    assert batch["input_features"].shape[0] == 2 and batch["video_grid_thw"].shape == (2, 3)
    assert batch.get("use_audio_in_video", False) == (interleave == "true")
    model = AutoModelForImageTextToText.from_pretrained(omni_model).eval()
    with torch.no_grad():
        loss = float(model(**batch).loss)
        silent = float(model(**{**batch, "input_features": torch.zeros_like(batch["input_features"])}).loss)
        blank = float(model(**{**batch, "pixel_values_videos": torch.zeros_like(batch["pixel_values_videos"])}).loss)
    assert abs(loss - silent) > 1e-6 and abs(loss - blank) > 1e-6


def test_images_and_audios_alone_use_omnis_markers(omni_model):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.dataset import make_collator

    ctx, _, features = omni_features(omni_model, "mllm_demo")
    assert "<|vision_bos|><|IMAGE|>" in ctx.tokenizer.decode(features["input_ids"][0])
    batch = make_collator(ctx, "supervised")([{k: features[k][i] for k in features} for i in range(2)])
    assert int((batch["mm_token_type_ids"] == 1).sum()) == int(batch["image_grid_thw"].prod(dim=1).sum()) // 4
    model = AutoModelForImageTextToText.from_pretrained(omni_model).eval()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
    ctx, _, features = omni_features(omni_model, "mllm_audio_demo")
    assert "<|audio_bos|><|AUDIO|>" in ctx.tokenizer.decode(features["input_ids"][0])


def test_a_video_without_a_sound_under_use_audio_in_video_is_named(omni_model, tmp_path):
    from tuneforge.errors import TuneforgeError

    from .test_video import make_video, video_dir, video_row

    video_dir(tmp_path, [video_row()])
    make_video(tmp_path / "vid" / "a.mp4")  # no audio track, and the row has no audio for it
    ctx = make_ctx(omni_model, tmp_path, dataset="clips", template="qwen2_omni", use_audio_in_video="true")
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings

    [result] = load_examples(ctx, ctx.plan.datasets)
    with pytest.raises(TuneforgeError) as err:
        featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
            {"_example": [json.dumps(e) for e in result.examples]})
    assert "a.mp4" in str(err.value) and "use_audio_in_video" in str(err.value)


def test_use_audio_in_video_with_a_template_without_audio_is_a_check_error():
    from tuneforge.errors import ConfigError
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    with pytest.raises(ConfigError) as err:
        prepare(None, [f"model_name_or_path={cached_tiny_model('qwen2_vl', 'tiny')}", "template=qwen2_vl",
                       f"dataset_dir={ANCHOR}", "dataset=mllm_video_demo", "use_audio_in_video=true"],
                manager=PluginManager(autoload=False))
    assert "use_audio_in_video" in str(err.value) and "qwen2_vl' takes images and videos, not audios" in str(err.value)


@pytest.mark.slow
def test_sft_lora_on_mllm_video_audio_demo_with_audio_in_video_loss_falls(omni_model, tmp_path):
    _, losses, keys = train_lora_sft(omni_model, "qwen2_omni", "mllm_video_audio_demo", tmp_path, batch_size=2,
                                     extra="use_audio_in_video: true\n")
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.5, losses
    assert keys and not [k for k in keys if "audio_tower" in k or ".visual." in k]
