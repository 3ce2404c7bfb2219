"""Vision-language models (issue 17, first slice): the tiny Qwen2-VL, LLaMA-Factory's image layout,
the qwen2_vl template's media handler, and sft + LoRA on mllm_demo."""

from __future__ import annotations

import json

import pytest

from tuneforge.errors import ConfigError, DataError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.context import RunContext

from .conftest import ANCHOR, data_context, run_cli


@pytest.fixture(scope="module")
def vl_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_vl", "tiny")


pytestmark = pytest.mark.usefixtures("private_cache")


def make_ctx(model, dataset_dir, **overrides) -> RunContext:
    base = dict(model_name_or_path=str(model), template="qwen2_vl", dataset_dir=str(dataset_dir), dataset="mllm_demo",
                cutoff_len=1024)
    return data_context(**{**base, **overrides})


def image_dir(tmp_path, rows, formatting="sharegpt", sizes=((60, 40), (30, 90))):
    """A dataset_dir with two small images and a dataset 'pics' of ``rows``."""
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    for index, size in enumerate(sizes):
        Image.new("RGB", size, (40 * index, 200, 90)).save(tmp_path / "img" / f"{index}.png")
    (tmp_path / "pics.json").write_text(json.dumps(rows))
    entry = {"file_name": "pics.json", "formatting": formatting, "columns": {"images": "images"}}
    if formatting == "sharegpt":
        entry["columns"]["messages"] = "messages"
        entry["tags"] = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"pics": entry}))
    return tmp_path


def chat_row(question="<image>What colour?", answer="Green.", images=("img/0.png",)):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "images": list(images)}


# --- the tiny model ---------------------------------------------------------------------------------


def test_tiny_qwen2_vl_loads_with_its_image_processor_and_the_image_text_to_text_class(vl_model):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    processor = AutoImageProcessor.from_pretrained(vl_model)
    model = AutoModelForImageTextToText.from_pretrained(vl_model)
    tokenizer = AutoTokenizer.from_pretrained(vl_model)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    pixels = processor(images=[Image.open(ANCHOR / "mllm_demo_data" / "1.jpg").convert("RGB")], return_tensors="pt")
    t, h, w = pixels["image_grid_thw"][0].tolist()
    assert h * w <= 64  # max_pixels 112*112: at most 8x8 patches
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                                         tokenize=False, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Hi" in text


# --- data ---------------------------------------------------------------------------------------


def test_mllm_demo_loads_as_is_with_its_images(vl_model):
    from tuneforge.data.loading import load_examples

    ctx = make_ctx(vl_model, ANCHOR)
    [result] = load_examples(ctx, ctx.plan.datasets)
    assert len(result.examples) == 6
    first = result.examples[0]
    assert first["images"] == [str((ANCHOR / "mllm_demo_data" / "1.jpg").resolve())] * 2


def test_ids_and_labels_are_what_the_models_own_chat_template_and_processor_give(vl_model):
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.template import IGNORE_INDEX
    from tuneforge.data.tokenize import Settings
    from transformers import AutoImageProcessor
    from PIL import Image

    ctx = make_ctx(vl_model, ANCHOR)
    [result] = load_examples(ctx, ctx.plan.datasets)
    example = result.examples[0]
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))({"_example": [json.dumps(example)]})
    ids, labels = features["input_ids"][0], features["labels"][0]

    # the reference: the model's own Jinja template on content parts, <|image_pad|> repeated grid/merge^2 times
    processor = AutoImageProcessor.from_pretrained(vl_model)
    grid = processor(images=[Image.open(p).convert("RGB") for p in example["images"]], return_tensors="np")["image_grid_thw"]
    counts = iter(int(g.prod()) // 4 for g in grid)
    messages = []
    for m in example["messages"]:
        parts = []
        for i, piece in enumerate(m["content"].split("<image>")):
            if i:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": m["role"], "content": parts if m["role"] == "user" else m["content"]})
    text = ctx.tokenizer.apply_chat_template(messages, tokenize=False)
    pieces = text.split("<|image_pad|>")
    text = pieces[0] + "".join("<|image_pad|>" * next(counts) + rest for rest in pieces[1:])
    expected = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ctx.tokenizer.decode(ids) == ctx.tokenizer.decode(expected)
    assert ids == expected

    pad = ctx.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert sum(i == pad for i in ids) == int(grid.prod(axis=1).sum()) // 4
    assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i == pad)
    assert features["images"][0] == example["images"]


def test_train_on_prompt_still_masks_the_image_tokens(vl_model):
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.template import IGNORE_INDEX
    from tuneforge.data.tokenize import Settings

    ctx = make_ctx(vl_model, ANCHOR, train_on_prompt="true")
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(result.examples[1])]})
    pad = ctx.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids, labels = features["input_ids"][0], features["labels"][0]
    assert any(i == pad for i in ids)
    assert all((label == IGNORE_INDEX) == (i == pad) for i, label in zip(ids, labels))


def test_the_collator_gives_the_model_its_pixels_and_they_change_the_loss(vl_model):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.dataset import featurizer, make_collator
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings

    ctx = make_ctx(vl_model, ANCHOR)
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in result.examples[:3]]})
    rows = [{k: features[k][i] for k in features} for i in range(3)]
    batch = make_collator(ctx, "supervised")(rows)
    assert batch["image_grid_thw"].shape == (4, 3)  # 2 + 1 + 1 images
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())
    assert int((batch["mm_token_type_ids"] == 1).sum()) == int(batch["image_grid_thw"].prod(dim=1).sum()) // 4
    model = AutoModelForImageTextToText.from_pretrained(vl_model).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        blank = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).loss
    assert torch.isfinite(loss) and abs(float(loss) - float(blank)) > 1e-6


@pytest.mark.parametrize("formatting", ["sharegpt", "alpaca"])
def test_bad_media_rows_are_named_by_file_row_and_field(vl_model, tmp_path, formatting):
    from tuneforge.data.loading import load_examples

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    rows = [chat_row(), chat_row(images=()), chat_row(images=("img/missing.png",)), chat_row(images=("img/broken.png",)),
            chat_row(question="<image><image>Which?", images=("img/0.png", "img/1.png"))]
    if formatting == "alpaca":
        rows = [{"instruction": r["messages"][0]["content"], "input": "", "output": r["messages"][1]["content"],
                 "images": r["images"]} for r in rows]
    image_dir(tmp_path, rows, formatting)
    ctx = make_ctx(vl_model, tmp_path, dataset="pics")
    with pytest.raises(DataError) as err:
        load_examples(ctx, ctx.plan.datasets)
    message = str(err.value)
    assert "3 bad row(s) of 5" in message
    assert "pics.json" in message
    assert "0 image file(s) but 1 <image> placeholder(s)" in message and "images:" in message
    assert "images[0]" in message and "missing.png" in message and "does not exist" in message
    assert "broken.png" in message and "not a readable image" in message
    ctx = make_ctx(vl_model, tmp_path, dataset="pics", skip_bad_rows="true")
    [result] = load_examples(ctx, ctx.plan.datasets)
    assert [len(e["images"]) for e in result.examples] == [1, 2]


def test_a_media_column_with_a_text_only_template_is_a_check_error(vl_model, tmp_path):
    image_dir(tmp_path, [chat_row()])
    with pytest.raises(ConfigError) as err:
        prepare(None, [f"model_name_or_path={vl_model}", "template=qwen", f"dataset_dir={tmp_path}", "dataset=pics"],
                manager=PluginManager(autoload=False))
    message = str(err.value)
    assert "media column 'images'" in message and "template 'qwen' is text-only" in message
    assert "template: qwen2_vl" in message and '"images": null' in message


def test_a_media_column_set_to_null_trains_on_the_text_alone(vl_model, tmp_path):
    from tuneforge.data.loading import load_examples

    image_dir(tmp_path, [chat_row()])
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    info["pics"]["columns"]["images"] = None
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    ctx = make_ctx(vl_model, tmp_path, dataset="pics", template="qwen")
    [result] = load_examples(ctx, ctx.plan.datasets)
    assert "images" not in result.examples[0]


def test_data_verb_shows_the_media_of_each_row_and_the_image_tokens(vl_model, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {vl_model}\ntemplate: qwen2_vl\ndataset: mllm_demo\ndataset_dir: {ANCHOR}\n"
                      "cutoff_len: 1024\n")
    result = run_cli("data", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "media: 8 images in 6 rows" in result.stdout
    assert "row 1: images 1.jpg, 1.jpg" in result.stdout
    assert "<|vision_start|><|image_pad|>*" in result.stdout


def test_the_qwen2_vl_template_is_no_longer_listed_as_waiting_for_vision(manager):
    spec = manager.template("qwen2_vl")
    assert spec.media is not None and spec.media.modalities == ("images", "videos")
    assert manager.template("qwen").media is None


# --- training --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lora_on_mllm_demo_loss_falls_and_lora_stays_off_the_vision_tower(vl_model, tmp_path):
    config = tmp_path / "sft.yaml"
    out = tmp_path / "out"
    config.write_text(f"""model_name_or_path: {vl_model}
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
dataset: mllm_demo
dataset_dir: {ANCHOR}
template: qwen2_vl
cutoff_len: 1024
output_dir: {out}
per_device_train_batch_size: 2
learning_rate: 5.0e-3
num_train_epochs: 8
logging_steps: 3
save_strategy: "no"
report_to: none
""")
    result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.5, losses
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if ".visual." in k]
    assert any("language_model" in k for k in keys)
    # the adapter reloads with PEFT alone on the image-text-to-text model
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(vl_model), out)
    lora = [n for n, _ in reloaded.named_parameters() if "lora_" in n]
    assert lora and not [n for n in lora if "visual" in n]


# --- chat -----------------------------------------------------------------------------------------


def test_chat_engine_feeds_the_image_to_generate(vl_model):
    from tuneforge.chat.engine import engine_for
    from tuneforge.errors import TuneforgeError

    prepared = prepare(None, [f"model_name_or_path={vl_model}", "template=qwen2_vl", "max_new_tokens=4", "do_sample=false"],
                       manager=PluginManager(autoload=False), inference=True)
    engine = engine_for(prepared)
    image = str(ANCHOR / "mllm_demo_data" / "2.jpg")
    messages = [{"role": "user", "content": "<image>Who is he?", "images": [image]}]
    ids = engine.encode(messages)
    pad = engine.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    import torch

    extra = engine._media_kwargs(messages, torch.tensor([ids]))
    assert int(extra["image_grid_thw"].prod()) // 4 == ids.count(pad) > 0
    assert int((extra["mm_token_type_ids"] == 1).sum()) == ids.count(pad)
    [reply] = engine.generate(messages)
    assert reply.completion_tokens > 0
    assert "".join(engine.stream(messages)) == reply.text
    with pytest.raises(TuneforgeError, match="1 image\\(s\\) but 0 <image>"):
        engine.encode([{"role": "user", "content": "Who?", "images": [image]}])
    with pytest.raises(TuneforgeError, match="does not exist"):
        engine.encode([{"role": "user", "content": "<image>Who?", "images": ["/nonexistent.png"]}])


def test_chat_verb_takes_an_image_and_a_text_only_template_refuses_it(vl_model, tmp_path):
    config = tmp_path / "chat.yaml"
    config.write_text(f"model_name_or_path: {vl_model}\ntemplate: qwen2_vl\nmax_new_tokens: 3\ndo_sample: false\n")
    image = str(ANCHOR / "mllm_demo_data" / "3.jpg")
    result = run_cli("chat", str(config), "--query", "What is this?", "--image", image)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("chat", str(config), "--query", "What is this?", "--image", image, "template=qwen")
    assert result.returncode != 0
    assert "template 'qwen' is text-only: it cannot take images" in result.stderr


def test_images_with_a_stage_that_does_not_take_them_yet_is_a_check_error(vl_model, tmp_path):
    image_dir(tmp_path, [chat_row()])
    with pytest.raises(ConfigError, match="stage 'pt' does not train on media yet"):
        prepare(None, [f"model_name_or_path={vl_model}", "template=qwen2_vl", f"dataset_dir={tmp_path}", "dataset=pics",
                       "stage=pt"], manager=PluginManager(autoload=False))


def _colour_set(folder, blank: bool):
    """36 squares of three noisy colours; the answer is the colour. ``blank``: every image the same grey,
    so the rows cannot be told apart and the answer cannot be learned (loss floor: ln 3 per colour token)."""
    import random

    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rng = random.Random(0)
    rows = []
    (folder / "img").mkdir(parents=True)
    for i in range(36):
        name = list(colours)[i % 3]
        colour = (128, 128, 128) if blank else tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in colours[name])
        Image.new("RGB", (56, 56), colour).save(folder / "img" / f"{i}.png")
        rows.append(chat_row("<image>What colour is the square?", name, (f"img/{i}.png",)))
    image_dir(folder, rows, sizes=())
    (folder / "pics.json").write_text(json.dumps(rows))


@pytest.mark.slow
def test_images_reach_the_model_it_learns_colours_from_them_and_not_from_blank_images(vl_model, tmp_path):
    final = {}
    for blank in (False, True):
        folder = tmp_path / ("blank" if blank else "colour")
        _colour_set(folder, blank)
        config = folder / "sft.yaml"
        config.write_text(f"model_name_or_path: {vl_model}\nstage: sft\ndo_train: true\nfinetuning_type: full\n"
                          f"dataset: pics\ndataset_dir: {folder}\ntemplate: qwen2_vl\ncutoff_len: 256\n"
                          f"output_dir: {folder / 'out'}\nper_device_train_batch_size: 6\nlearning_rate: 2.0e-3\n"
                          "num_train_epochs: 15\nlogging_steps: 6\nsave_strategy: 'no'\nreport_to: none\nseed: 0\n"
                          "freeze_vision_tower: false\nfreeze_multi_modal_projector: false\n")
        result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        log = [json.loads(line) for line in (folder / "out" / "trainer_log.jsonl").read_text().splitlines()]
        final[blank] = [r["loss"] for r in log if "loss" in r][-1]
    # The reply is 2-3 tokens + <|im_end|> (3.7 on average): with blank images the first one is a guess
    # among three, so the mean token loss cannot fall far below ln(3)/3.7 ~ 0.3 (seen: 0.26; with the
    # colours: 0.002). The two runs differ only in the pixels, so the pixels reach the model.
    assert final[False] < 0.02 and final[True] > 0.15, final


@pytest.mark.slow
def test_full_finetuning_keeps_the_vision_tower_and_projector_bit_identical_by_default(vl_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    config = tmp_path / "full.yaml"
    out = tmp_path / "out"
    config.write_text(f"model_name_or_path: {vl_model}\nstage: sft\ndo_train: true\nfinetuning_type: full\n"
                      f"dataset: mllm_demo\ndataset_dir: {ANCHOR}\ntemplate: qwen2_vl\ncutoff_len: 1024\n"
                      f"output_dir: {out}\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nmax_steps: 3\n"
                      "save_strategy: 'no'\nreport_to: none\n")
    result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    before, after = load_file(vl_model / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [k for k in before if "visual" in k.split(".")]  # saved as visual.blocks..., visual.merger...
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    language = [k for k in before if "visual" not in k.split(".") and k in after]
    assert any(not torch.equal(before[k], after[k]) for k in language)


def test_cutoff_len_never_splits_an_images_tokens(vl_model):
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings
    from tuneforge.plugins.templates._media import Qwen2VLMedia

    ctx = make_ctx(vl_model, ANCHOR, cutoff_len=40)
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in result.examples]})
    pad = ctx.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert 0 < len(features["input_ids"]) < len(result.examples)  # the rows an image would be cut in are dropped
    for ids, images in zip(features["input_ids"], features["images"]):
        assert len(ids) <= 40
        assert ids.count(pad) == sum(Qwen2VLMedia()._counts(images, str(vl_model)))
