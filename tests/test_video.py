"""Videos with Qwen2-VL (issue 17, "video and audio"): LLaMA-Factory's mllm_video_demo as it is, frames
decoded with PyAV, the video_* keys, bad video rows, the collator's video inputs and the cache key."""

from __future__ import annotations

import math

import pytest

from tuneforge.errors import DataError

from .conftest import ANCHOR
from .test_vision import make_ctx, vl_model  # noqa: F401 (vl_model is a fixture)
from .multimodal import features_of, media_dataset, media_row, train_lora_sft

pytestmark = pytest.mark.usefixtures("private_cache")

av = pytest.importorskip("av")


def make_video(path, frames=10, rate=5, size=(32, 32)):
    """A small video: ``frames`` grey frames at ``rate`` fps (``frames / rate`` seconds)."""
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            pixels = np.full((size[1], size[0], 3), (index * 20) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_dir(tmp_path, rows):
    return media_dataset(tmp_path, "clips", "videos", "vid", rows)


def video_row(question="<video>What happens?", answer="It fades.", videos=("vid/a.mp4",)):
    return media_row(question, answer, "videos", videos)


def video_tokens(ctx, ids):
    return ids.count(ctx.tokenizer.convert_tokens_to_ids("<|video_pad|>"))


# --- sampling rules -------------------------------------------------------------------------------


def test_frames_are_sampled_as_llama_factory_samples_them():
    from tuneforge.plugins.templates._video import VideoSettings, sample_indices

    default = VideoSettings()  # 2 fps, at most 128 frames
    assert sample_indices(243, 9.72, default) == [int(i * 242 / 18) for i in range(19)]  # floor(9.72 * 2) frames
    assert sample_indices(243, 9.72, VideoSettings(maxlen=4)) == [0, 80, 161, 242]
    assert sample_indices(10, 2.0, VideoSettings(fps=100)) == list(range(10))  # never more than the file has
    assert sample_indices(10, 0.2, default) == [0]  # at least one
    assert sample_indices(0, 1.0, default) == []


def test_a_still_video_is_patched_exactly_as_the_image_processor_patches_its_frame(vl_model):
    """The patch layout check that runs without torchvision: two identical frames (one temporal group)
    must give the same patches, in the same order, as transformers' Qwen2-VL image processor gives for
    the frame (it repeats an image over the temporal patch); 56x84 needs no resize on either side."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor

    from tuneforge.plugins.templates._video import video_patches

    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8))
    patches, grid = video_patches((frame, frame), str(vl_model))
    reference = AutoImageProcessor.from_pretrained(vl_model)(images=[frame], return_tensors="np")
    assert grid == tuple(reference["image_grid_thw"][0]) == (1, 4, 6)
    np.testing.assert_allclose(patches, reference["pixel_values"], atol=1e-5)


# --- mllm_video_demo ------------------------------------------------------------------------------


def test_mllm_video_demo_ids_and_labels_are_the_chat_template_with_the_processors_video_token_count(vl_model):
    """The reference count comes from the documented rules and transformers' own Qwen2-VL resize
    function: frames = floor(duration * video_fps) made even, each scaled under video_max_pixels, then
    smart_resize'd; tokens = frames / 2 * (h / 14) * (w / 14) / 4."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from tuneforge.data.template import IGNORE_INDEX

    ctx = make_ctx(vl_model, ANCHOR, dataset="mllm_video_demo")
    result, features = features_of(ctx)
    assert len(result.examples) == 3 and [len(e["videos"]) for e in result.examples] == [1, 1, 1]

    for example, ids, labels in zip(result.examples, features["input_ids"], features["labels"]):
        with av.open(example["videos"][0]) as container:
            stream = container.streams.video[0]
            frames = min(stream.frames, 128, math.floor(float(stream.duration * stream.time_base) * 2.0))
            width, height = stream.width, stream.height
        frames += frames % 2
        scale = math.sqrt(256 * 256 / (width * height)) if width * height > 256 * 256 else 1.0
        h, w = smart_resize(int(height * scale), int(width * scale), factor=28, min_pixels=28 * 28, max_pixels=112 * 112)
        count = frames // 2 * (h // 14) * (w // 14) // 4

        parts = [{"type": "video"}, {"type": "text", "text": example["messages"][0]["content"].replace("<video>", "")}]
        messages = [{"role": "user", "content": parts}, example["messages"][1]]
        text = ctx.tokenizer.apply_chat_template(messages, tokenize=False)
        text = text.replace("<|video_pad|>", "<|video_pad|>" * count)
        assert ids == ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
        pad = ctx.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        assert ids.count(pad) == count > 0
        assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i == pad)
        assert any(label != IGNORE_INDEX for label in labels)
    assert features["videos"] == [e["videos"] for e in result.examples]


def test_the_collator_gives_the_model_its_frames_and_they_change_the_loss(vl_model):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.dataset import make_collator

    ctx = make_ctx(vl_model, ANCHOR, dataset="mllm_video_demo", video_fps="1.0")
    _, features = features_of(ctx)
    rows = [{k: features[k][i] for k in features} for i in range(2)]
    batch = make_collator(ctx, "supervised")(rows)
    grid = batch["video_grid_thw"]
    assert grid.shape == (2, 3) and "pixel_values" not in batch
    assert batch["pixel_values_videos"].shape == (int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    assert int((batch["mm_token_type_ids"] == 2).sum()) == int(grid.prod(dim=1).sum()) // 4
    model = AutoModelForImageTextToText.from_pretrained(vl_model).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        blank = model(**{**batch, "pixel_values_videos": torch.zeros_like(batch["pixel_values_videos"])}).loss
    assert torch.isfinite(loss) and abs(float(loss) - float(blank)) > 1e-6


# --- the video_* keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, tokens", [
    ({}, 2),                                      # 2 s at 2 fps: 4 frames -> 2 pairs of one 2x2-patch token
    ({"video_fps": "5"}, 5),                      # 10 frames (all of them)
    ({"video_fps": "5", "video_maxlen": "6"}, 3),  # capped at 6 frames
    ({"video_fps": "1.5"}, 2),                    # 3 frames, made even by repeating the last
    ({"video_min_pixels": str(112 * 112)}, 32),   # 32x32 frames scaled up to 112x112: 8x8 patches
])
def test_video_fps_maxlen_and_min_pixels_change_the_frames_and_tokens(vl_model, tmp_path, overrides, tokens):
    video_dir(tmp_path, [video_row()])
    make_video(tmp_path / "vid" / "a.mp4", frames=10, rate=5, size=(32, 32))
    ctx = make_ctx(vl_model, tmp_path, dataset="clips", **overrides)
    _, features = features_of(ctx)
    assert video_tokens(ctx, features["input_ids"][0]) == tokens


def test_video_max_pixels_shrinks_the_frames(vl_model, tmp_path):
    video_dir(tmp_path, [video_row()])
    make_video(tmp_path / "vid" / "a.mp4", frames=4, rate=2, size=(224, 224))
    counts = []
    for pixels in (256 * 256, 56 * 56):
        ctx = make_ctx(vl_model, tmp_path, dataset="clips", video_max_pixels=str(pixels))
        _, features = features_of(ctx)
        counts.append(video_tokens(ctx, features["input_ids"][0]))
    assert counts == [2 * 16, 2 * 4]  # 4 frames; 112x112 (the processor's cap): 8x8 patches, 56x56: 4x4


def test_the_video_settings_are_in_the_cache_key(vl_model, tmp_path):
    from tuneforge.data.cache import cache_key
    from tuneforge.data.tokenize import Settings

    video_dir(tmp_path, [video_row()])
    make_video(tmp_path / "vid" / "a.mp4")
    keys = []
    for fps in ("2", "2", "4"):
        ctx = make_ctx(vl_model, tmp_path, dataset="clips", video_fps=fps)
        keys.append(cache_key(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))[0])
    make_video(tmp_path / "vid" / "a.mp4", frames=12)  # the file changed
    ctx = make_ctx(vl_model, tmp_path, dataset="clips", video_fps="2")
    keys.append(cache_key(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))[0])
    assert keys[0] == keys[1] and len(set(keys)) == 3


# --- bad rows -------------------------------------------------------------------------------------


def test_bad_video_rows_are_named_by_file_row_and_field(vl_model, tmp_path):
    from tuneforge.data.loading import load_examples

    video_dir(tmp_path, [video_row(), video_row(videos=()), video_row(videos=("vid/missing.mp4",)),
                         video_row(videos=("vid/broken.mp4",)), video_row(question="<video><video>Same?",
                                                                          videos=("vid/a.mp4", "vid/a.mp4"))])
    make_video(tmp_path / "vid" / "a.mp4")
    (tmp_path / "vid" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    ctx = make_ctx(vl_model, tmp_path, dataset="clips")
    with pytest.raises(DataError) as err:
        load_examples(ctx, ctx.plan.datasets)
    message = str(err.value)
    assert "3 bad row(s) of 5" in message and "clips.json" in message
    assert "0 video file(s) but 1 <video> placeholder(s)" in message and "videos:" in message
    assert "videos[0]" in message and "missing.mp4" in message and "does not exist" in message
    assert "broken.mp4" in message and "not a readable video" in message
    ctx = make_ctx(vl_model, tmp_path, dataset="clips", skip_bad_rows="true")
    [result] = load_examples(ctx, ctx.plan.datasets)
    assert [len(e["videos"]) for e in result.examples] == [1, 2]


def test_an_image_given_as_a_video_is_named(vl_model, tmp_path):
    from PIL import Image

    from tuneforge.data.loading import load_examples

    video_dir(tmp_path, [video_row(videos=("vid/still.png",))])
    Image.new("RGB", (8, 8)).save(tmp_path / "vid" / "still.png")
    make_video(tmp_path / "vid" / "a.mp4")
    ctx = make_ctx(vl_model, tmp_path, dataset="clips")
    try:
        [result] = load_examples(ctx, ctx.plan.datasets)
    except DataError as err:  # FFmpeg builds differ: a still image may or may not count as a one-frame video
        assert "still.png" in str(err) and "videos[0]" in str(err)
    else:
        _, features = features_of(ctx)
        assert video_tokens(ctx, features["input_ids"][0]) == 1  # one frame (made two): a single 2x2 token


# --- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lora_on_mllm_video_demo_loss_falls(vl_model, tmp_path):
    _, losses, _ = train_lora_sft(vl_model, "qwen2_vl", "mllm_video_demo", tmp_path, extra="video_fps: 1.0\n")
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.5, losses


# --- a third party's handler ----------------------------------------------------------------------


def test_a_third_party_media_handler_is_configured_per_run_and_its_settings_key_the_cache(vl_model, tmp_path):
    from tuneforge import ChatTemplateSpec, hookimpl
    from tuneforge.data.cache import cache_key
    from tuneforge.data.media import MediaHandler
    from tuneforge.data.tokenize import Settings
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_tokenizer

    class Clips(MediaHandler):
        modalities = ("videos",)
        frames = None

        def configure(self, config):
            configured = Clips()
            configured.frames = config.get("video_maxlen")
            return configured

        def describe(self):
            return {"frames": self.frames}

    definition = PluginManager(autoload=False).template("qwen2_vl").definition

    class Plugin:
        @hookimpl
        def tuneforge_chat_templates(self):
            return [ChatTemplateSpec(name="my_clips", description="clips", definition=dict(definition), media=Clips())]

    video_dir(tmp_path, [video_row()])
    make_video(tmp_path / "vid" / "a.mp4")
    keys = []
    for frames in (6, 6, 8):
        manager = PluginManager(autoload=False, extra_plugins=[("my-clips", Plugin())])
        prepared = prepare(None, [f"model_name_or_path={vl_model}", "template=my_clips", f"dataset_dir={tmp_path}",
                                  "dataset=clips", f"video_maxlen={frames}"], manager=manager)
        ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
        load_tokenizer(ctx)
        assert ctx.media.frames == frames and ctx.plan.template.spec.media.frames is None
        keys.append(cache_key(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))[0])
    assert keys[0] == keys[1] != keys[2]
