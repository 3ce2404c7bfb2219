"""Audios with Qwen2-Audio (issue 17, "video and audio"): the tiny qwen2_audio model, LLaMA-Factory's
mllm_audio_demo as it is, audio_sampling_rate, bad audio rows, and media the template does not take."""

from __future__ import annotations

import pytest

from tuneforge.errors import ConfigError, DataError, TuneforgeError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import ANCHOR
from .test_vision import make_ctx
from .multimodal import features_of, media_dataset, media_row, train_lora_sft

pytestmark = pytest.mark.usefixtures("private_cache")

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def audio_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_audio", "tiny")


def audio_ctx(model, dataset_dir, dataset="mllm_audio_demo", **overrides):
    return make_ctx(model, dataset_dir, dataset=dataset, template="qwen2_audio", **overrides)


def make_tone(path, seconds=1.0, rate=16000, hz=440.0):
    """A mono sine tone written with PyAV (a .wav or .flac by the suffix)."""
    import numpy as np

    samples = (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    codec = {"wav": "pcm_s16le", "flac": "flac"}[str(path).rsplit(".", 1)[1]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def sound_dir(tmp_path, rows):
    return media_dataset(tmp_path, "sounds", "audios", "snd", rows)


def sound_row(question="<audio>What is it?", answer="A tone.", audios=("snd/a.wav",)):
    return media_row(question, answer, "audios", audios)


def test_tiny_qwen2_audio_loads_with_its_processor_and_the_multimodal_lm_class(audio_model):
    from transformers import AutoFeatureExtractor, AutoModelForMultimodalLM, AutoProcessor

    model = AutoModelForMultimodalLM.from_pretrained(audio_model)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert type(AutoProcessor.from_pretrained(audio_model)).__name__ == "Qwen2AudioProcessor"
    assert AutoFeatureExtractor.from_pretrained(audio_model).sampling_rate == 16000


def test_mllm_audio_demo_ids_and_labels_are_what_qwen2_audios_processor_gives(audio_model):
    """The reference: LLaMA-Factory's qwen2_audio rendering (ChatML, <audio> -> <|audio_bos|><|AUDIO|>
    <|audio_eos|>) given to transformers' own Qwen2AudioProcessor, which expands <|AUDIO|> itself."""
    from transformers import AutoProcessor

    from tuneforge.data.template import IGNORE_INDEX
    from tuneforge.plugins.templates._audio import read_audio

    ctx = audio_ctx(audio_model, ANCHOR)
    result, features = features_of(ctx)
    assert len(result.examples) == 3
    processor = AutoProcessor.from_pretrained(audio_model)
    pad = ctx.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    for example, ids, labels in zip(result.examples, features["input_ids"], features["labels"]):
        user, reply = (m["content"] for m in example["messages"])
        text = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                f"{user.replace('<audio>', '<|audio_bos|><|AUDIO|><|audio_eos|>')}<|im_end|>\n<|im_start|>assistant\n"
                f"{reply}<|im_end|>\n")
        expected = processor(text=[text], audio=[read_audio(example["audios"][0], 16000)], sampling_rate=16000)
        assert ids == expected["input_ids"][0]
        assert ids.count(pad) > 20
        assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i == pad)
        assert ctx.tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX]) == reply + "<|im_end|>\n"


def test_the_collator_gives_the_model_its_features_and_they_change_the_loss(audio_model):
    import torch
    from transformers import AutoModelForMultimodalLM

    from tuneforge.data.dataset import make_collator

    ctx = audio_ctx(audio_model, ANCHOR)
    _, features = features_of(ctx)
    batch = make_collator(ctx, "supervised")([{k: features[k][i] for k in features} for i in range(2)])
    assert batch["input_features"].shape == (2, 128, 3000)
    mel = batch["feature_attention_mask"].sum(dim=1)
    tokens = ((mel - 1) // 2 + 1 - 2) // 2 + 1
    assert (batch["input_ids"] == ctx.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum(dim=1).tolist() == tokens.tolist()
    model = AutoModelForMultimodalLM.from_pretrained(audio_model).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        silent = model(**{**batch, "input_features": torch.zeros_like(batch["input_features"])}).loss
    assert torch.isfinite(loss) and abs(float(loss) - float(silent)) > 1e-6


def test_audio_is_resampled_to_audio_sampling_rate_and_a_rate_the_model_was_not_made_for_is_named(audio_model, tmp_path):
    from tuneforge.plugins.templates._audio import read_audio

    sound_dir(tmp_path, [sound_row()])
    make_tone(tmp_path / "snd" / "a.wav", seconds=1.0, rate=44100)
    path = str(tmp_path / "snd" / "a.wav")
    assert abs(len(read_audio(path, 16000)) - 16000) <= 32 and abs(len(read_audio(path, 8000)) - 8000) <= 32
    ctx = audio_ctx(audio_model, tmp_path, dataset="sounds")
    _, features = features_of(ctx)
    assert features["input_ids"][0].count(ctx.tokenizer.convert_tokens_to_ids("<|AUDIO|>")) == 25  # 100 mel frames
    ctx = audio_ctx(audio_model, tmp_path, dataset="sounds", audio_sampling_rate="8000")
    with pytest.raises(TuneforgeError) as err:
        features_of(ctx)
    assert "audio_sampling_rate 8000" in str(err.value) and "16000" in str(err.value)


def test_bad_audio_rows_are_named_by_file_row_and_field(audio_model, tmp_path):
    from tuneforge.data.loading import load_examples

    sound_dir(tmp_path, [sound_row(), sound_row(audios=()), sound_row(audios=("snd/missing.wav",)),
                         sound_row(audios=("snd/broken.mp3",)), sound_row(audios=("snd/b.flac",))])
    make_tone(tmp_path / "snd" / "a.wav")
    make_tone(tmp_path / "snd" / "b.flac", seconds=0.5)
    (tmp_path / "snd" / "broken.mp3").write_bytes(b"no sound in here" * 10)
    ctx = audio_ctx(audio_model, tmp_path, dataset="sounds")
    with pytest.raises(DataError) as err:
        load_examples(ctx, ctx.plan.datasets)
    message = str(err.value)
    assert "3 bad row(s) of 5" in message and "sounds.json" in message
    assert "0 audio file(s) but 1 <audio> placeholder(s)" in message
    assert "audios[0]" in message and "missing.wav" in message and "does not exist" in message
    assert "broken.mp3" in message and "not a readable audio" in message


def test_media_a_template_does_not_take_is_a_check_error_naming_what_it_takes(audio_model, tmp_path):
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    with pytest.raises(ConfigError) as err:  # videos and audios: Qwen2-Audio has no vision, Qwen2-VL no audio
        prepare(None, [f"model_name_or_path={audio_model}", "template=qwen2_audio", f"dataset_dir={ANCHOR}",
                       "dataset=mllm_video_audio_demo"], manager=PluginManager(autoload=False))
    assert "template 'qwen2_audio' takes only audios, not videos" in str(err.value)
    with pytest.raises(ConfigError) as err:
        prepare(None, [f"model_name_or_path={cached_tiny_model('qwen2_vl', 'tiny')}", "template=qwen2_vl",
                       f"dataset_dir={ANCHOR}", "dataset=mllm_audio_demo"], manager=PluginManager(autoload=False))
    assert "template 'qwen2_vl' takes only images and videos, not audios" in str(err.value)


@pytest.mark.slow
def test_sft_lora_on_mllm_audio_demo_loss_falls_and_lora_stays_off_the_audio_tower(audio_model, tmp_path):
    _, losses, keys = train_lora_sft(audio_model, "qwen2_audio", "mllm_audio_demo", tmp_path)
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.5, losses
    assert keys and not [k for k in keys if "audio_tower" in k]
