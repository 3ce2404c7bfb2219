"""Vision-language model families through the generic, processor-driven media handler (issue 17):
`media: processor` + `media_placeholders` in a template YAML, the tiny models of each family, and
the rendered ids/labels of an mllm_demo row against the model's own chat template + processor."""

from __future__ import annotations

import json

import pytest

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.context import RunContext
from tuneforge.train.model import load_tokenizer

from .conftest import ANCHOR, data_context, run_cli

#: tiny-model family -> the template that serves it (the Instruct / chat variant the tiny model copies).
FAMILIES = {"qwen3_vl": "qwen3_vl_nothink", "gemma3": "gemma3", "intern_vl": "intern_vl"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return request.param, cached_tiny_model(request.param, "tiny")


@pytest.fixture(scope="module")
def qwen3_vl():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen3_vl", "tiny")


pytestmark = pytest.mark.usefixtures("private_cache")


def make_ctx(model, template, **overrides) -> RunContext:
    base = dict(model_name_or_path=str(model), template=template, dataset_dir=str(ANCHOR), dataset="mllm_demo",
                cutoff_len=2048)
    return data_context(**{**base, **overrides})


def content_parts(message: dict) -> dict:
    """A message with ``<image>`` placeholders as the content parts a model's own chat template takes."""
    parts = []
    for i, piece in enumerate(message["content"].split("<image>")):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return {"role": message["role"], "content": parts if message["role"] == "user" else message["content"]}


# --- the YAML contract ------------------------------------------------------------------------------


def test_a_template_definition_selects_the_processor_handler_with_yaml_keys_alone():
    from tuneforge import ChatTemplateSpec
    from tuneforge.data.media import ProcessorMedia

    spec = ChatTemplateSpec(name="my_vl", description="", definition={"format_user": "U: {{content}}\nA: ", "media": "processor",
                                                       "media_placeholders": {"image": "<start_of_image>"}})
    assert isinstance(spec.media, ProcessorMedia) and spec.media.placeholders == {"image": "<start_of_image>"}
    assert spec.media.modalities == ("images",)
    assert "media" not in spec.definition and "media_placeholders" not in spec.definition
    assert ChatTemplateSpec(name="text", description="", definition={"format_user": "{{content}}"}).media is None


@pytest.mark.parametrize("definition, message", [
    ({"media": "pixels", "media_placeholders": {"image": "<i>"}}, "media: 'pixels' is not a media handler"),
    ({"media": "processor"}, "needs media_placeholders"),
    ({"media": "processor", "media_placeholders": {"picture": "<i>"}}, "media_placeholders.picture: unknown medium"),
    ({"media": "processor", "media_placeholders": {"image": ""}}, "media_placeholders.image must be a non-empty string"),
])
def test_a_bad_media_definition_names_the_template_and_the_key(definition, message):
    from tuneforge import ChatTemplateSpec

    with pytest.raises(ValueError, match=message) as info:
        ChatTemplateSpec(name="my_vl", description="", definition=definition)
    assert "template 'my_vl'" in str(info.value)


def test_the_done_families_are_no_longer_listed_as_waiting_for_vision(manager):
    from tuneforge.plugins.templates.builtin import multimodal_names

    for template in set(FAMILIES.values()) | {"qwen3_vl"}:
        assert template not in multimodal_names()
        entry = manager.entry("template", template)
        assert entry.spec.media is not None and entry.spec.unavailable_reason is None


def test_a_placeholder_without_the_processors_image_token_is_a_clear_error(qwen3_vl):
    from tuneforge.data.media import ProcessorMedia
    from tuneforge.errors import TuneforgeError

    handler = ProcessorMedia({"image": "<image>"})
    with pytest.raises(TuneforgeError, match=r"expands '<\|image_pad\|>': the placeholder must contain the processor's image token"):
        handler.expand([{"role": "user", "content": "<image>Hi"}],
                       {"images": [str(ANCHOR / "mllm_demo_data" / "1.jpg")]}, str(qwen3_vl), None)


# --- per family: the tiny model, and ids/labels equal to the model's own template + processor -------


def test_the_tiny_model_loads_with_the_image_text_to_text_class_and_its_processor(family):
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.media import load_processor

    name, path = family
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) < 6_000_000
    processor = load_processor(str(path))
    assert processor.tokenizer.chat_template and processor.image_token


def test_ids_and_labels_are_what_the_models_own_chat_template_and_processor_give(family):
    from PIL import Image

    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.media import load_processor
    from tuneforge.data.template import IGNORE_INDEX
    from tuneforge.data.tokenize import Settings

    name, path = family
    ctx = make_ctx(path, FAMILIES[name])
    [result] = load_examples(ctx, ctx.plan.datasets)
    example = result.examples[0]  # two turns, an image in each
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))({"_example": [json.dumps(example)]})
    ids, labels = features["input_ids"][0], features["labels"][0]

    processor = load_processor(str(path))
    text = processor.tokenizer.apply_chat_template([content_parts(m) for m in example["messages"]], tokenize=False)
    # add_special_tokens=False: the chat template writes BOS itself (as apply_chat_template(tokenize=True) does)
    expected = processor(text=[text], images=[Image.open(p).convert("RGB") for p in example["images"]],
                         add_special_tokens=False)
    expected = [int(i) for i in expected["input_ids"][0]]
    assert ctx.tokenizer.decode(ids) == ctx.tokenizer.decode(expected)
    assert ids == expected

    media = set(ctx.media.media_token_ids(ctx.tokenizer))
    assert sum(i in media for i in ids) > 2 * len(example["images"])  # the images were expanded
    assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i in media)
    # the replies are trained, token for token
    trained = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    replies = [ctx.tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in example["messages"]
               if m["role"] == "assistant"]
    for reply in replies:
        assert any(trained[k:k + len(reply)] == reply for k in range(len(trained)))
    assert features["images"][0] == example["images"]


def test_the_collator_gives_the_model_its_pixel_inputs_and_they_change_the_loss(family):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.dataset import featurizer, make_collator
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings

    name, path = family
    ctx = make_ctx(path, FAMILIES[name])
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in result.examples[:3]]})
    rows = [{k: features[k][i] for k in features} for i in range(3)]
    batch = make_collator(ctx, "supervised")(rows)
    assert "pixel_values" in batch
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        blank = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).loss
    assert torch.isfinite(loss) and abs(float(loss) - float(blank)) > 1e-6


def sft_lora(model, template, tmp_path):
    """A short sft + LoRA run on mllm_demo: the losses, and the adapter's tensor names."""
    config = tmp_path / "sft.yaml"
    out = tmp_path / "out"
    config.write_text(f"""model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
lora_rank: 8
dataset: mllm_demo
dataset_dir: {ANCHOR}
template: {template}
cutoff_len: 1024
output_dir: {out}
per_device_train_batch_size: 3
learning_rate: 1.0e-2
max_steps: 6
logging_steps: 1
save_strategy: "no"
report_to: none
""")
    result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    from safetensors import safe_open

    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        return losses, list(f.keys())


#: where each family's vision tower and projector live (no adapter may be there)
VISION_PARTS = {"qwen3_vl": (".visual.",), "gemma3": ("vision_tower", "multi_modal_projector"),
                "intern_vl": ("vision_tower", "multi_modal_projector")}


def test_sft_lora_on_mllm_demo_trains_and_lora_stays_off_the_vision_tower(qwen3_vl, tmp_path):
    """The CI run for the processor handler: tiny Qwen3-VL, mllm_demo, LoRA; loss falls."""
    losses, keys = sft_lora(qwen3_vl, "qwen3_vl_nothink", tmp_path)
    assert len(losses) == 6 and min(losses[-2:]) < losses[0] - 0.5, losses
    assert keys and not [k for k in keys if any(part in k for part in VISION_PARTS["qwen3_vl"])]
    assert any("language_model" in k for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3", "intern_vl"])
def test_sft_lora_on_mllm_demo_for_the_other_families(name, tmp_path):
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    losses, keys = sft_lora(cached_tiny_model(name, "tiny"), FAMILIES[name], tmp_path)
    assert len(losses) == 6 and min(losses[-2:]) < losses[0] - 0.5, losses
    assert keys and not [k for k in keys if any(part in k for part in VISION_PARTS[name])]
    assert any("language_model" in k for k in keys)


def test_the_tiny_models_own_template_is_detected_as_the_familys(family):
    from transformers import AutoTokenizer

    from tuneforge.plugins.templates.builtin import tuneforge_detect_template

    name, path = family
    assert tuneforge_detect_template(AutoTokenizer.from_pretrained(path)) == FAMILIES[name]


def test_chat_engine_feeds_the_image_to_generate(family):
    import torch

    from tuneforge.chat.engine import engine_for

    name, path = family
    prepared = prepare(None, [f"model_name_or_path={path}", f"template={FAMILIES[name]}", "max_new_tokens=4",
                              "do_sample=false"], manager=PluginManager(autoload=False), inference=True)
    engine = engine_for(prepared)
    messages = [{"role": "user", "content": "<image>Who is he?", "images": [str(ANCHOR / "mllm_demo_data" / "2.jpg")]}]
    ids = engine.encode(messages)
    media = engine.ctx.media.media_token_ids(engine.tokenizer)
    assert sum(i in media for i in ids) > 2
    extra = engine._media_kwargs(messages, torch.tensor([ids]))
    assert "pixel_values" in extra
    key = engine.ctx.media.token_types_key(str(path))
    assert key is None or int((extra[key] == 1).sum()) == sum(i in media for i in ids)
    [reply] = engine.generate(messages)
    assert reply.completion_tokens > 0


def test_a_text_only_model_under_the_gemma3_template_trains_on_text_as_before(tmp_path):
    """gemma3 serves the text-only Gemma 3 too: without a processor its rows have no media tokens."""
    from tuneforge.data.dataset import featurizer, make_collator
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    ctx = make_ctx(cached_tiny_model("gemma", "tiny"), "gemma3", dataset="alpaca_en_demo")
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in result.examples[:2]]})
    batch = make_collator(ctx, "supervised")([{k: features[k][i] for k in features} for i in range(2)])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


@pytest.mark.slow
def test_a_full_finetune_saves_the_processor_and_chats_with_an_image(qwen3_vl, tmp_path):
    from tuneforge.chat.engine import engine_for

    out = tmp_path / "full"
    config = tmp_path / "full.yaml"
    config.write_text(f"""model_name_or_path: {qwen3_vl}
stage: sft
do_train: true
finetuning_type: full
dataset: mllm_demo
dataset_dir: {ANCHOR}
template: qwen3_vl_nothink
output_dir: {out}
max_steps: 1
save_strategy: "no"
report_to: none
""")
    result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "preprocessor_config.json").is_file() and (out / "processor_config.json").is_file()
    prepared = prepare(None, [f"model_name_or_path={out}", "template=qwen3_vl_nothink", "max_new_tokens=3",
                              "do_sample=false"], manager=PluginManager(autoload=False), inference=True)
    messages = [{"role": "user", "content": "<image>Who?", "images": [str(ANCHOR / "mllm_demo_data" / "1.jpg")]}]
    [reply] = engine_for(prepared).generate(messages)
    assert reply.completion_tokens > 0


def test_the_data_cache_key_follows_the_processor_settings(tmp_path):
    """image_seq_length lives in processor_config.json: changing it changes the token counts, so the key."""
    import shutil

    from tuneforge.data.cache import cache_key
    from tuneforge.data.tokenize import Settings
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    model = tmp_path / "intern_vl"
    shutil.copytree(cached_tiny_model("intern_vl", "tiny"), model)
    ctx = make_ctx(model, "intern_vl")
    settings = Settings.from_config(ctx.config, "supervised")
    before, _ = cache_key(ctx, "supervised", settings)
    config = json.loads((model / "processor_config.json").read_text())
    (model / "processor_config.json").write_text(json.dumps({**config, "image_seq_length": 16}))
    after, _ = cache_key(ctx, "supervised", settings)
    assert before and after and before != after


THIRD_PARTY_YAML = """
description: My Gemma-3-style VLM, added by a plugin with YAML alone.
format_prefix: "{{bos_token}}"
format_system: "{{content}}\\n\\n"
format_user: "<start_of_turn>user\\n{{content}}<end_of_turn>\\n<start_of_turn>model\\n"
format_assistant: "{{content}}<end_of_turn>\\n"
system_in_user: true
append_eos: false
stop_words: ["<end_of_turn>"]
media: processor
media_placeholders: {image: "<start_of_image>"}
"""


def test_a_third_party_plugin_adds_a_vision_family_with_yaml_alone():
    """Registered through the hook as a package would be: its template trains on mllm_demo with the
    model's processor, token for token what the model's own chat template + processor give."""
    import types

    import yaml
    from PIL import Image

    from tuneforge import ChatTemplateSpec, hookimpl
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.media import load_processor
    from tuneforge.data.tokenize import Settings
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    plugin = types.ModuleType("my_vl_plugin")
    plugin.tuneforge_chat_templates = hookimpl(lambda: [ChatTemplateSpec(
        name="my_vl", description="My VLM", definition=yaml.safe_load(THIRD_PARTY_YAML))])
    model = cached_tiny_model("gemma3", "tiny")
    manager = PluginManager(autoload=False, extra_plugins=[("my_vl_plugin", plugin)])
    prepared = prepare(None, [f"model_name_or_path={model}", "template=my_vl", f"dataset_dir={ANCHOR}",
                              "dataset=mllm_demo"], manager=manager)
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    [result] = load_examples(ctx, ctx.plan.datasets)
    example = result.examples[2]
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))({"_example": [json.dumps(example)]})
    processor = load_processor(str(model))
    text = processor.tokenizer.apply_chat_template([content_parts(m) for m in example["messages"]], tokenize=False)
    expected = processor(text=[text], images=[Image.open(p).convert("RGB") for p in example["images"]],
                         add_special_tokens=False)["input_ids"][0]
    assert features["input_ids"][0] == [int(i) for i in expected]


def test_the_tiny_model_verb_offers_every_family_the_builder_makes():
    from tuneforge.plugins.apps.tiny_model import builder, cli

    assert cli.FAMILIES == builder.FAMILIES + builder.VISION_FAMILIES + builder.AUDIO_FAMILIES
    assert {"qwen3_vl", "gemma3", "intern_vl", "llava", "llava_next", "llava_next_llama3", "llava_next_yi"} <= set(builder.VISION_FAMILIES)


def test_qwen3_vl_thinking_is_qwen3s_reasoning_format_with_qwen3_vl_images(qwen3_vl):
    """qwen3_vl renders turns and <think> blocks as qwen3 does, and expands images as qwen3_vl_nothink."""
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.template import Template
    from tuneforge.data.tokenize import Settings
    from tuneforge.plugins.templates.builtin import _definitions

    definitions = _definitions()
    thinking, qwen3 = Template.from_definition("qwen3_vl", definitions["qwen3_vl"]), Template.from_definition("qwen3", definitions["qwen3"])
    assert thinking.reasoning and thinking.thought_words == qwen3.thought_words
    ctx = make_ctx(qwen3_vl, "qwen3_vl")
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nHm.\n</think>\n\nHello."},
                    {"role": "user", "content": "Bye"}]
    for enable_thinking in (True, False):
        assert (thinking.render_prompt(ctx.tokenizer, conversation, None, enable_thinking=enable_thinking)
                == qwen3.render_prompt(ctx.tokenizer, conversation, None, enable_thinking=enable_thinking))
    [result] = load_examples(ctx, ctx.plan.datasets)
    settings = Settings.from_config(ctx.config, "supervised")
    row = {"_example": [json.dumps(result.examples[0])]}
    nothink = make_ctx(qwen3_vl, "qwen3_vl_nothink")
    media = set(ctx.media.media_token_ids(ctx.tokenizer))
    ids = featurizer(ctx, "supervised", settings)(row)["input_ids"][0]
    plain = featurizer(nothink, "supervised", Settings.from_config(nothink.config, "supervised"))(row)["input_ids"][0]
    assert [i for i in ids if i in media] == [i for i in plain if i in media] and len(media & set(ids)) >= 1
