"""LLaVA 1.5 and LLaVA-NeXT (issue 17): llava-hf's published chat template ends every turn with a space
the next word absorbs (" A USER:"), so the templates encode the conversation whole and cut it at
character offsets (``encode_whole``); the ids are token for token what the model's own chat template +
processor give, and the labels train exactly the replies' tokens. LLaVA-NeXT on Llama 3 goes through
the same processor handler with the Llama 3 turns."""

from __future__ import annotations

import json

import pytest

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import ANCHOR
from .test_vision_families import make_ctx

FAMILIES = {"llava": "llava", "llava_next": "llava_next", "llava_next_llama3": "llava_next_llama3",
            "llava_next_yi": "llava_next_yi"}
#: what ends a reply (trained with it), per family that is not Vicuna-style
REPLY_END = {"llava_next_llama3": "<|eot_id|>", "llava_next_yi": "<|im_end|>\n"}
#: the Vicuna-style families (llava-hf's "USER: ... ASSISTANT:" template, encoded whole)
VICUNA = {"llava", "llava_next"}


def trained_text(name: str, reply: str, last: bool) -> str:
    """What a reply trains, as text: llava's with its leading space (and, at the row's end, its last
    space when that is a token of its own); Llama 3's with its <|eot_id|>."""
    if name in VICUNA:
        return " " + reply
    return reply + REPLY_END[name]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return request.param, cached_tiny_model(request.param, "tiny")


pytestmark = pytest.mark.usefixtures("private_cache")


def parts(message: dict) -> dict:
    """A message as the content parts llava-hf's template takes (it renders images first, then text)."""
    pieces = message["content"].split("<image>")
    out = [{"type": "image"} for _ in pieces[1:]]
    text = "".join(pieces)
    return {"role": message["role"], "content": out + ([{"type": "text", "text": text}] if text else [])}


def features_of(ctx, examples):
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.tokenize import Settings

    return featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in examples]})


def test_ids_and_labels_are_the_published_template_and_processors_token_for_token(family):
    from PIL import Image

    from tuneforge.data.loading import load_examples
    from tuneforge.data.media import load_processor
    from tuneforge.data.template import IGNORE_INDEX

    name, path = family
    ctx = make_ctx(path, FAMILIES[name])
    [result] = load_examples(ctx, ctx.plan.datasets)
    example = result.examples[0]  # "<image>Who are they?" -> reply, "What are they doing?<image>" -> reply
    features = features_of(ctx, [example])
    ids, labels = features["input_ids"][0], features["labels"][0]

    processor = load_processor(str(path))
    text = processor.tokenizer.apply_chat_template([parts(m) for m in example["messages"]], tokenize=False)
    # the processor adds BOS itself, as processor.apply_chat_template(tokenize=True) does for this template
    expected = processor(text=[text], images=[Image.open(p).convert("RGB") for p in example["images"]])
    expected = [int(i) for i in expected["input_ids"][0]]
    if ctx.tokenizer.bos_token_id is not None:  # Yi's ChatML tokenizer has none
        assert ids[0] == ctx.tokenizer.bos_token_id and ids[1] != ctx.tokenizer.bos_token_id
    assert ctx.tokenizer.decode(ids) == ctx.tokenizer.decode(expected)
    assert ids == expected

    media = set(ctx.media.media_token_ids(ctx.tokenizer))
    assert sum(i in media for i in ids) >= 2 * 16  # two images, 16+ tokens each
    assert all(label == IGNORE_INDEX for i, label in zip(ids, labels) if i in media)
    # trained: each reply with its leading space ("ASSISTANT:" + " A"), nothing of the prompts; the space
    # after a reply is trained only where it is a token of its own (a token goes with the piece that
    # holds its last character: a " USER" token is the next prompt's)
    replies = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
    trained_runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            trained_runs.append(run)
            run = []
    if run:
        trained_runs.append(run)
    decoded = [ctx.tokenizer.decode(r) for r in trained_runs]
    assert [d.rstrip(" ") if name in VICUNA else d for d in decoded] == [trained_text(name, r, False) for r in replies]
    if name in VICUNA:
        assert decoded[-1].endswith(" ") and "USER" not in "".join(decoded)


@pytest.mark.parametrize("name", sorted(VICUNA))
def test_turn_by_turn_encoding_would_not_give_the_models_ids(name):
    """Why ``encode_whole``: the pieces encoded one by one split " USER" into " " + "USER"."""
    import dataclasses

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    path = cached_tiny_model(name, "tiny")
    ctx = make_ctx(path, FAMILIES[name], dataset="alpaca_en_demo")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]
    whole = ctx.template.encode_supervised(ctx.tokenizer, messages)
    piecewise = dataclasses.replace(ctx.template, encode_whole=False).encode_supervised(ctx.tokenizer, messages)
    text = ctx.tokenizer.apply_chat_template([{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                                              for m in messages], tokenize=False)
    assert whole[0] == ctx.tokenizer(text)["input_ids"]
    assert piecewise[0] != whole[0]
    # generation: the prompt ends with "ASSISTANT:", as the template's add_generation_prompt writes it
    prompt = ctx.template.encode_prompt(ctx.tokenizer, messages[:3])
    assert prompt == ctx.tokenizer(ctx.tokenizer.apply_chat_template(
        [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages[:3]],
        tokenize=False, add_generation_prompt=True))["input_ids"]


def test_the_collator_gives_the_model_its_pixels_and_they_change_the_loss(family):
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge.data.dataset import make_collator
    from tuneforge.data.loading import load_examples

    name, path = family
    ctx = make_ctx(path, FAMILIES[name])
    [result] = load_examples(ctx, ctx.plan.datasets)
    features = features_of(ctx, result.examples[:2])
    batch = make_collator(ctx, "supervised")([{k: features[k][i] for k in features} for i in range(2)])
    assert "pixel_values" in batch and "token_type_ids" not in batch and "mm_token_type_ids" not in batch
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    with torch.no_grad():
        loss = model(**batch).loss
        blank = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).loss
    assert torch.isfinite(loss) and abs(float(loss) - float(blank)) > 1e-6


def test_the_tiny_llava_is_detected_and_chats_about_an_image(family):
    from transformers import AutoTokenizer

    from tuneforge.chat.engine import engine_for
    from tuneforge.plugins.templates.builtin import tuneforge_detect_template

    name, path = family
    # llava-hf publishes one chat template for LLaVA 1.5 and LLaVA-NeXT on Vicuna: both detect as llava,
    # which renders and masks the same text (the processor, not the template, sets the image tokens)
    assert tuneforge_detect_template(AutoTokenizer.from_pretrained(path)) == ("llava" if name in VICUNA else name)
    prepared = prepare(None, [f"model_name_or_path={path}", f"template={FAMILIES[name]}", "max_new_tokens=3",
                              "do_sample=false"], manager=PluginManager(autoload=False), inference=True)
    engine = engine_for(prepared)
    messages = [{"role": "user", "content": "<image>Who is he?", "images": [str(ANCHOR / "mllm_demo_data" / "2.jpg")]}]
    ids = engine.encode(messages)
    prompt = engine.tokenizer.decode(ids)
    assert prompt.endswith({"llava_next_llama3": "Who is he?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
                            "llava_next_yi": "Who is he?<|im_end|>\n<|im_start|>assistant\n"}.get(name, "Who is he? ASSISTANT:")), prompt
    [reply] = engine.generate(messages)
    assert reply.completion_tokens > 0


def test_no_multimodal_name_is_left_waiting_and_the_waiting_mechanism_still_refuses(manager):
    """templates/_multimodal.yaml is empty now; a spec with an unavailable reason still stops at check."""
    from tuneforge import ChatTemplateSpec
    from tuneforge.plugins.templates.builtin import NEEDS_VISION, multimodal_names

    assert multimodal_names() == {}
    for name in FAMILIES.values():
        assert manager.entry("template", name).spec.media is not None
    import types

    from tuneforge import hookimpl

    plugin = types.ModuleType("future_vl_plugin")
    plugin.tuneforge_chat_templates = hookimpl(lambda: [ChatTemplateSpec(
        name="future_vl", description="", unavailable_reason=lambda: NEEDS_VISION)])
    extended = PluginManager(autoload=False, extra_plugins=[("future_vl_plugin", plugin)])
    assert extended.entry("template", "future_vl").status == f"unavailable: {NEEDS_VISION}"


@pytest.mark.slow
def test_sft_lora_on_mllm_demo_trains_and_lora_stays_off_the_vision_tower(tmp_path):
    """12 steps (the replies carry no end-of-turn token to learn first, so the loss falls slower than
    the ChatML families'): loss falls, the adapter is on the language model alone."""
    from safetensors import safe_open

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    from .conftest import run_cli

    config, out = tmp_path / "sft.yaml", tmp_path / "out"
    config.write_text(f"""model_name_or_path: {cached_tiny_model("llava", "tiny")}
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
dataset: mllm_demo
dataset_dir: {ANCHOR}
template: llava
output_dir: {out}
per_device_train_batch_size: 3
learning_rate: 1.0e-2
max_steps: 12
logging_steps: 1
save_strategy: "no"
report_to: none
""")
    result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert len(losses) == 12 and min(losses[-3:]) < losses[0] - 0.3, losses
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "vision_tower" in k or "multi_modal_projector" in k]
    assert any("language_model" in k for k in keys)


def test_media_first_is_validated_and_is_part_of_the_data_cache_key():
    from tuneforge import ChatTemplateSpec

    base = {"format_user": "U: {{content}}\nA: ", "media": "processor", "media_placeholders": {"image": "<image>\n"}}
    with pytest.raises(ValueError, match="template 'my_vl': media_first must be true or false"):
        ChatTemplateSpec(name="my_vl", description="", definition={**base, "media_first": "yes"})
    first = ChatTemplateSpec(name="my_vl", description="", definition={**base, "media_first": True}).media
    in_place = ChatTemplateSpec(name="my_vl", description="", definition=base).media
    assert first.first and not in_place.first and first.describe() != in_place.describe()
    messages = [{"role": "user", "content": "What is it?<image>"}]
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    path = str(cached_tiny_model("llava", "tiny"))
    image = [str(ANCHOR / "mllm_demo_data" / "1.jpg")]
    assert first.expand(messages, {"images": image}, path, None)[0]["content"].endswith("<image>\nWhat is it?")
    assert in_place.expand(messages, {"images": image}, path, None)[0]["content"].startswith("What is it?<image>")


def test_text_rows_of_an_encode_whole_template_are_batched_exactly():
    """The batched tokeniser (many rows in one call) gives an ``encode_whole`` template's text rows the ids
    of one whole encoding per conversation, as the per-row path does."""
    from tuneforge.data.template import Template
    from tuneforge.plugin_manager import PluginManager
    from transformers import AutoTokenizer

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(str(cached_tiny_model("llava", "tiny")))
    template = Template.from_definition("llava", PluginManager(autoload=False).template("llava").definition)
    assert template.encode_whole
    conversations = [([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello you"},
                       {"role": "user", "content": "What now"}, {"role": "assistant", "content": "Nothing much"}], None, None),
                     ([{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}], "Be kind.", None)]
    batched = template.encode_turns_many(tokenizer, conversations)
    assert batched == [template.encode_turns(tokenizer, m, s, t) for m, s, t in conversations]
