"""LLaMA-Factory's image_do_pan_and_scan (Gemma 3) and crop_to_patches (InternVL) act through the model's
own image processor (`media: processor` templates), on the tiny gemma3 and intern_vl: each crop or tile
is one more image of ``image_seq_length`` tokens, as the processors document. Under a template whose
handler does not pass them, `tuneforge check` says they do nothing."""

from __future__ import annotations

import pytest
from PIL import Image

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.context import RunContext
from tuneforge.train.model import load_tokenizer

from .conftest import ANCHOR


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 4:1 picture, large enough for Gemma 3's pan and scan (crops of at least 256 pixels a side)."""
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.new("RGB", (1200, 300), (200, 30, 30)).save(path)
    return str(path)


def rendered(family: str, template: str, image: str, *settings: str):
    """(media-token count of ``<image>`` expanded, pixel_values rows, image_seq_length) for one picture."""
    from tuneforge.data.media import load_processor
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    model = str(cached_tiny_model(family, "tiny"))
    prepared = prepare(None, [f"model_name_or_path={model}", f"template={template}", *settings],
                       manager=PluginManager(autoload=False), inference=True)
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    [message] = ctx.media.expand([{"role": "user", "content": "<image>What colour?"}], {"images": [image]}, model,
                                 ctx.tokenizer)
    processor = load_processor(model)
    ids = ctx.tokenizer(message["content"], add_special_tokens=False)["input_ids"]
    media = ctx.media.media_token_ids(ctx.tokenizer)
    count = sum(i in media for i in ids)
    rows = ctx.media.inputs([{"images": [image]}], model, ctx.tokenizer)["pixel_values"].shape[0]
    return count, rows, processor.image_seq_length


def test_image_do_pan_and_scan_adds_gemma3s_crops_each_with_its_image_tokens(wide):
    count, rows, per_image = rendered("gemma3", "gemma3", wide)
    assert rows == 1 and count == per_image  # the checkpoint's setting: no pan and scan
    assert rendered("gemma3", "gemma3", wide, "image_do_pan_and_scan=false")[:2] == (count, rows)
    count, rows, per_image = rendered("gemma3", "gemma3", wide, "image_do_pan_and_scan=true")
    assert rows == 5 and count == 5 * per_image  # the whole picture + 4 square crops of a 4:1 picture
    # a picture too small to crop stays one image (the processor's min crop size)
    small = str(ANCHOR / "mllm_demo_data" / "1.jpg")
    assert rendered("gemma3", "gemma3", small, "image_do_pan_and_scan=true")[1] == 1


def test_crop_to_patches_turns_intern_vls_tiles_on_and_off(wide):
    # InternVL wraps an image's patches in one <img>...</img> pair (both media tokens, masked too)
    count, rows, per_image = rendered("intern_vl", "intern_vl", wide, "crop_to_patches=false")
    assert rows == 1 and count == per_image + 2
    count, rows, per_image = rendered("intern_vl", "intern_vl", wide, "crop_to_patches=true")
    assert rows == 3 and count == 3 * per_image + 2  # max_patches 2 tiles + the thumbnail


def test_the_keys_are_in_the_data_cache_key(tmp_path):
    from tuneforge.data.cache import cache_key
    from tuneforge.data.tokenize import Settings
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    keys = []
    for setting in ("crop_to_patches=false", "crop_to_patches=true"):
        prepared = prepare(None, [f"model_name_or_path={cached_tiny_model('intern_vl', 'tiny')}", "template=intern_vl",
                                  "dataset=mllm_demo", f"dataset_dir={ANCHOR}", setting], manager=PluginManager(autoload=False))
        ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
        load_tokenizer(ctx)
        keys.append(cache_key(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))[0])
    assert keys[0] and keys[1] and keys[0] != keys[1]


def test_a_template_whose_handler_does_not_pass_them_warns_at_check(tmp_path):
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    prepared = prepare(None, [f"model_name_or_path={cached_tiny_model('qwen2_vl', 'tiny')}", "template=qwen2_vl",
                              "crop_to_patches=true", "image_do_pan_and_scan=false"],
                       manager=PluginManager(autoload=False), inference=True)
    [warning] = [w for w in prepared.warnings if "crop_to_patches" in w or "pan_and_scan" in w]
    assert warning.startswith("crop_to_patches (command line) has no effect with template 'qwen2_vl'")
