"""Vision-language models in use (issue 17, part "use"): dpo/kto/rm on image pairs, export of a merged
VLM, the API's image_url parts, predict on a multimodal eval set, and the image_*_pixels keys.
All on the tiny random Qwen2-VL (`tuneforge tiny-model --family qwen2_vl`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

from .conftest import ANCHOR

PICTURES = ANCHOR / "mllm_demo_data"


@pytest.fixture(scope="module")
def vl_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_vl", "tiny")


@pytest.fixture(autouse=True)
def private_cache_one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine
    yield
    torch.set_num_threads(threads)


def picture_pairs(folder) -> str:
    """LLaMA-Factory's rlhf_v layout (a ranking sharegpt dataset with an ``images`` column) on the three
    mllm_demo pictures: the chosen reply names the picture, the rejected one says it cannot see."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in (1, 2, 3):
        shutil.copy(PICTURES / f"{i}.jpg", folder / "img" / f"{i}.jpg")
        for question in ("Who are they?", "What is in the picture?"):
            rows.append({"conversations": [{"from": "human", "value": f"<image>{question}"}],
                         "chosen": {"from": "gpt", "value": f"Picture {i}: people."},
                         "rejected": {"from": "gpt", "value": "I cannot see."}, "images": [f"img/{i}.jpg"]})
    kto_rows = [{"messages": [{"role": "user", "content": r["conversations"][0]["value"]},
                              {"role": "assistant", "content": r[side]["value"]}],
                 "label": side == "chosen", "images": r["images"]} for r in rows for side in ("chosen", "rejected")]
    (folder / "pairs.json").write_text(json.dumps(rows))
    (folder / "kto.json").write_text(json.dumps(kto_rows))
    (folder / "dataset_info.json").write_text(json.dumps({
        "pairs": {"file_name": "pairs.json", "ranking": True, "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"}},
        "kto_pics": {"file_name": "kto.json", "formatting": "sharegpt",
                     "columns": {"messages": "messages", "kto_tag": "label", "images": "images"},
                     "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
    }))
    return str(folder)


def train(vl_model, tmp_path, **overrides):
    base = dict(model_name_or_path=str(vl_model), template="qwen2_vl", stage="dpo", dataset="pairs",
                dataset_dir=picture_pairs(tmp_path / "data"), output_dir=str(tmp_path / "out"), cutoff_len=512,
                finetuning_type="lora", lora_target="all", per_device_train_batch_size=2, max_steps=6,
                learning_rate=5e-3, logging_steps=2, report_to="none", disable_tqdm=True, save_strategy="'no'")
    base.update(overrides)
    prepared = prepare(None, [f"{k}={v}" for k, v in base.items()], manager=PluginManager(autoload=False))
    return run_training(prepared)


def train_logs(output_dir) -> list[dict]:
    return [r for r in map(json.loads, (output_dir / "trainer_log.jsonl").read_text().splitlines()) if "loss" in r]


# --- dpo / kto / rm with images ----------------------------------------------------------------------


def test_dpo_with_images_feeds_the_pixels_to_both_sides_and_trains(vl_model, tmp_path):
    from tuneforge.plugins.stages._preference import forward_logps, media_inputs

    ctx = train(vl_model, tmp_path)
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 3
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["rewards/margins"] > logs[0]["rewards/margins"], logs
    assert logs[-1]["rewards/accuracies"] == 1.0

    trainer = ctx.extras["trainer"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    pad = ctx.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_row = (batch["input_ids"] == pad).sum(-1).tolist()
    assert per_row[:2] == per_row[2:] and min(per_row) > 0  # chosen rows, then rejected rows: same images
    assert int(batch["image_grid_thw"].prod(-1).sum()) // 4 == sum(per_row)  # pixels for all four rows
    media = media_inputs(batch)
    assert set(media) == {"pixel_values", "image_grid_thw", "mm_token_type_ids"}
    model = trainer.model.eval()
    rows = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad():
        seen = forward_logps(model, *rows, **media).total
        blind = forward_logps(model, *rows, **{**media, "pixel_values": torch.zeros_like(media["pixel_values"])}).total
    assert ((seen - blind).abs() > 1e-4).all(), (seen, blind)  # every row, chosen and rejected, sees its pixels


def test_kto_with_images_trains(vl_model, tmp_path):
    ctx = train(vl_model, tmp_path, stage="kto", dataset="kto_pics", per_device_train_batch_size=4, max_steps=4)
    logs = train_logs(tmp_path / "out")
    assert logs and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    assert logs[-1]["rewards/chosen"] > logs[0]["rewards/chosen"] - 1e-6, logs
    trainer = ctx.extras["trainer"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    pad = ctx.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal((batch["input_ids"] == pad).sum(-1), (batch["kl_input_ids"] == pad).sum(-1))
    assert torch.equal(batch["kl_mm_token_type_ids"] == 1, batch["kl_input_ids"] == pad)


def test_a_stage_without_media_still_refuses_images_and_names_those_that_take_them(vl_model, tmp_path):
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stage 'pt' does not train on media yet \(stages that do: .*dpo.*kto.*sft"):
        prepare(None, [f"model_name_or_path={vl_model}", "template=qwen2_vl", f"dataset_dir={picture_pairs(tmp_path)}",
                       "dataset=kto_pics", "stage=pt"], manager=PluginManager(autoload=False))


def test_rm_with_images_learns_to_rank_the_pairs(vl_model, tmp_path):
    from tuneforge.plugins.stages._preference import media_inputs
    from tuneforge.plugins.stages._value_head import score

    ctx = train(vl_model, tmp_path, stage="rm", max_steps=8, learning_rate=1e-2)
    logs = train_logs(tmp_path / "out")
    assert logs[-1]["loss"] < logs[0]["loss"], logs
    trainer = ctx.extras["trainer"]
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    model = trainer.model.eval()
    media = media_inputs(batch)
    with torch.no_grad():
        seen = score(model, batch["input_ids"], batch["attention_mask"], **media)
        blind = score(model, batch["input_ids"], batch["attention_mask"],
                      **{**media, "pixel_values": torch.zeros_like(media["pixel_values"])})
    assert (seen[:2] > seen[2:]).all(), seen  # chosen above rejected
    assert ((seen - blind).abs() > 1e-5).all(), (seen, blind)  # the score depends on the pixels


# --- export --------------------------------------------------------------------------------------------


def test_export_of_a_merged_vlm_writes_the_processor_and_reloads_with_transformers_alone(vl_model, tmp_path):
    from PIL import Image
    from peft import PeftModel
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from tuneforge.plugins.apps.export.exporter import run_export

    train(vl_model, tmp_path, stage="sft", dataset="mllm_demo", dataset_dir=str(ANCHOR), max_steps=3, learning_rate=2e-2,
          save_strategy="'no'")
    adapter, out = tmp_path / "out", tmp_path / "export"
    prepared = prepare(None, [f"model_name_or_path={vl_model}", "template=qwen2_vl", "finetuning_type=lora",
                              f"adapter_name_or_path={adapter}", f"export_dir={out}"],
                       manager=PluginManager(autoload=False), inference=True)
    report = run_export(prepared)
    assert report["reload_class"] == "AutoModelForImageTextToText"
    assert report["image_processor_matches_training"] is True
    assert "preprocessor_config.json" in report["processor_files"]
    assert report["chat_template_source"] == "model" and report["chat_template_matches_training"] is True
    assert report["image_prompt_logits_vs_adapter_max_abs_diff"] <= report["tolerance"]
    assert report["logits_vs_base_max_abs_diff"] > 0
    assert (out / "chat_template.jinja").is_file() or "chat_template" in json.loads((out / "tokenizer_config.json").read_text())

    # transformers alone: the export answers an image prompt as base + adapter (unmerged) does
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    pixels = processor(images=[Image.open(PICTURES / "1.jpg").convert("RGB")], return_tensors="pt")
    count = int(pixels["image_grid_thw"].prod()) // processor.merge_size ** 2
    content = [{"type": "image"}, {"type": "text", "text": "Who are they?"}]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Who are they?" in text
    ids = tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt")["input_ids"]
    kinds = (ids == tokenizer.convert_tokens_to_ids("<|image_pad|>")).long()
    inputs = dict(input_ids=ids, mm_token_type_ids=kinds, **pixels)
    with torch.no_grad():
        merged = AutoModelForImageTextToText.from_pretrained(out).eval()(**inputs).logits
        unmerged_model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(vl_model), adapter).eval()
        unmerged = unmerged_model(**inputs).logits
        with unmerged_model.disable_adapter():
            base = unmerged_model(**inputs).logits
    assert torch.allclose(merged, unmerged, atol=1e-4), (merged - unmerged).abs().max()
    assert (merged - base).abs().max() > 1e-3


# --- the OpenAI-compatible API ---------------------------------------------------------------------------


def _engine(vl_model, template="qwen2_vl"):
    from tuneforge.chat.engine import engine_for

    prepared = prepare(None, [f"model_name_or_path={vl_model}", f"template={template}", "max_new_tokens=3", "do_sample=false"],
                       manager=PluginManager(autoload=False), inference=True)
    return engine_for(prepared)


@pytest.fixture(scope="module")
def vl_engine(vl_model):
    return _engine(vl_model)


def _serve(engine, **options):
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from tuneforge.plugins.apps.api.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model_name="tiny-vl", **options), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return server, thread, url


@pytest.fixture
def served(request):
    """``served(engine, **create_app options) -> base URL``: in-process servers, all stopped at the end."""
    running = []

    def start(engine, **options):
        server, thread, url = _serve(engine, **options)
        running.append((server, thread))
        return url

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=15)


def _data_url(path) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def _ask(client, url: str, text: str = "Who are they?", **kwargs):
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": content}],
                                          max_tokens=3, **kwargs)


def test_api_takes_image_url_parts_data_urls_and_paths_under_api_media_dir(vl_engine, served, tmp_path):
    openai = pytest.importorskip("openai")
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(PICTURES / "1.jpg", media / "1.jpg")
    (tmp_path / "secret.jpg").write_bytes((PICTURES / "2.jpg").read_bytes())
    (media / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (media / "notes.jpg").write_text("not an image")
    client = openai.OpenAI(base_url=served(vl_engine, media_dir=str(media)) + "/v1", api_key="none", max_retries=0, timeout=60)

    text_only = client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": "Who are they?"}], max_tokens=3)
    seen = _ask(client, _data_url(PICTURES / "1.jpg"))
    assert seen.choices[0].message.content is not None
    # the image became the model's image tokens: <|vision_start|> + grid/4 x <|image_pad|> + <|vision_end|>
    grid = vl_engine._with_media([{"role": "user", "content": "<image>", "images": [str(PICTURES / "1.jpg")]}])[1]["image_grid_thw"]
    assert seen.usage.prompt_tokens == text_only.usage.prompt_tokens + int(grid.prod()) // 4 + 2
    by_path = _ask(client, str(media / "1.jpg"))
    assert by_path.usage.prompt_tokens == seen.usage.prompt_tokens and by_path.choices[0].message.content == seen.choices[0].message.content
    assert _ask(client, "1.jpg").usage.prompt_tokens == seen.usage.prompt_tokens  # relative to API_MEDIA_DIR
    assert _ask(client, (media / "1.jpg").as_uri()).usage.prompt_tokens == seen.usage.prompt_tokens
    streamed = client.chat.completions.create(model="tiny-vl", stream=True, max_tokens=3, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(PICTURES / "1.jpg")}},
                                     {"type": "text", "text": "Who are they?"}]}])
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == seen.choices[0].message.content

    refused = {
        str(tmp_path / "secret.jpg"): "is outside API_MEDIA_DIR",
        "../secret.jpg": "is outside API_MEDIA_DIR",
        "link.jpg": "is outside API_MEDIA_DIR",  # a symbolic link out of the folder
        "missing.jpg": "does not exist under API_MEDIA_DIR",
        "notes.jpg": "is not a readable image",
        "data:image/png;base64,@@@": "not valid base64",
        "https://example.com/cat.png": "remote image URLs are refused by this server",
        "ftp://example.com/cat.png": "unsupported image URL scheme 'ftp'",
        "bad\u0000name.jpg": "is not a usable file path",
        "x" * 5000 + ".jpg": "cannot be read",
    }
    for url, message in refused.items():
        with pytest.raises(openai.BadRequestError) as error:
            _ask(client, url)
        assert message in error.value.message, (url, error.value.message)
        assert error.value.body["param"] == "messages[0].content[0].image_url.url"


def test_api_refuses_local_paths_without_api_media_dir_and_fetches_remote_urls_only_when_allowed(vl_engine, served, tmp_path):
    import functools
    import http.server
    import threading

    openai = pytest.importorskip("openai")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PICTURES))
    pictures = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=pictures.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{pictures.server_port}/1.jpg"
    try:
        plain = openai.OpenAI(base_url=served(vl_engine) + "/v1", api_key="none", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="local image paths are refused by this server.*API_MEDIA_DIR"):
            _ask(plain, str(PICTURES / "1.jpg"))
        with pytest.raises(openai.BadRequestError, match="API_ALLOW_REMOTE_MEDIA=1"):
            _ask(plain, remote)
        fetching = openai.OpenAI(base_url=served(vl_engine, allow_remote_media=True) + "/v1", api_key="none",
                                 max_retries=0, timeout=60)
        assert _ask(fetching, remote).usage.prompt_tokens == _ask(plain, _data_url(PICTURES / "1.jpg")).usage.prompt_tokens
    finally:
        pictures.shutdown()


def test_api_a_text_only_model_given_an_image_is_a_clear_400(vl_model, served):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=served(_engine(vl_model, template="qwen")) + "/v1", api_key="none", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError, match=r"text-only \(template 'qwen'\): it cannot take images"):
        _ask(client, _data_url(PICTURES / "1.jpg"))
    with pytest.raises(openai.BadRequestError, match="needs 'image_url'"):
        client.chat.completions.create(model="tiny-vl", max_tokens=3, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"link": "x"}}]}])


# --- predict ---------------------------------------------------------------------------------------------


def test_predict_on_a_multimodal_eval_set_feeds_each_rows_images(vl_model, tmp_path):
    for module in ("jieba", "nltk", "rouge_chinese"):  # the BLEU/ROUGE scorers (the eval extra)
        pytest.importorskip(module)
    from tuneforge.plugins.templates._media import Qwen2VLMedia

    prepared = prepare(None, [f"model_name_or_path={vl_model}", "template=qwen2_vl", "stage=sft", "do_predict=true",
                              "predict_with_generate=true", "eval_dataset=mllm_demo", f"dataset_dir={ANCHOR}",
                              f"output_dir={tmp_path / 'out'}", "max_new_tokens=4", "do_sample=false", "cutoff_len=64",
                              "report_to=none", "per_device_eval_batch_size=4"], manager=PluginManager(autoload=False))
    ctx = run_training(prepared)
    rows = [json.loads(line) for line in (tmp_path / "out" / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    from tuneforge.data.loading import load_examples

    [result] = load_examples(ctx, ctx.plan.eval_datasets)
    for row, example in zip(rows, result.examples):
        # every image of the prompt is there as its tokens (cutoff_len 64 does not cut a prompt with images)
        expected = sum(Qwen2VLMedia()._counts(example["images"], str(vl_model)))
        assert row["prompt"].count("<|image_pad|>") == expected > 0
        assert row["prompt"].count("<|vision_start|>") == len(example["images"])
        assert row["label"] == example["messages"][-1]["content"]
    assert "predict_bleu-4" in json.loads((tmp_path / "out" / "predict_results.json").read_text())


# --- image_max_pixels / image_min_pixels ------------------------------------------------------------------


def _image_tokens(vl_model, folder, image: str, **keys) -> tuple[int, tuple[int, ...]]:
    """(image tokens in the featurized row, pixel_values shape the collator makes) for one picture."""
    from tuneforge.data.dataset import featurizer, make_collator
    from tuneforge.data.tokenize import Settings
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_tokenizer

    values = dict(model_name_or_path=str(vl_model), template="qwen2_vl", dataset_dir=str(folder), dataset="pics",
                  cutoff_len=1024, **keys)
    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    row = {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}],
           "images": [str(folder / image)]}
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))({"_example": [json.dumps(row)]})
    pad = ctx.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    batch = make_collator(ctx, "supervised")([{k: v[0] for k, v in features.items()}])
    assert int(batch["image_grid_thw"].prod()) // 4 == features["input_ids"][0].count(pad)  # pixels match the tokens
    return features["input_ids"][0].count(pad), tuple(batch["pixel_values"].shape)


def test_image_max_and_min_pixels_resize_before_the_processor_and_change_the_image_token_count(vl_model, tmp_path):
    from PIL import Image

    shutil.copy(PICTURES / "1.jpg", tmp_path / "big.jpg")  # 300 x 168
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "small.png")
    (tmp_path / "pics.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"pics": {"file_name": "pics.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    # The tiny model's processor keeps an image within 28x28 .. 112x112 pixels (Qwen2-VL: one token per 28x28).
    # Defaults (768x768, 32x32) leave both pictures to it: 300x168 -> 56x140 (10 tokens); 20x20 -> 28x28 (1).
    assert _image_tokens(vl_model, tmp_path, "big.jpg")[0] == 10
    assert _image_tokens(vl_model, tmp_path, "small.png")[0] == 1
    # image_max_pixels 56x56: 300x168 is scaled by sqrt(3136 / 50400) to 74x41 first -> 28x84 -> 3 tokens
    assert _image_tokens(vl_model, tmp_path, "big.jpg", image_max_pixels=56 * 56)[0] == 3
    # image_min_pixels 112x112: 20x20 is scaled up to 112x112 first -> 16 tokens
    assert _image_tokens(vl_model, tmp_path, "small.png", image_min_pixels=112 * 112)[0] == 16


def test_data_doctor_shows_the_image_pairs_with_their_image_tokens_folded(vl_model, tmp_path, capsys):
    from tuneforge.data.doctor import run_doctor
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_tokenizer

    prepared = prepare(None, [f"model_name_or_path={vl_model}", "stage=dpo", "dataset=pairs", "template=qwen2_vl",
                              f"dataset_dir={picture_pairs(tmp_path)}", "cutoff_len=512"], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    assert run_doctor(ctx, "pairwise") == 0
    out = capsys.readouterr().out
    assert "media: 6 images in 6 rows" in out
    assert out.count("<|vision_start|><|image_pad|>*10<|vision_end|>Who are they?") == 2  # chosen and rejected


def test_openai_messages_with_images_in_several_turns_keep_each_turns_images_in_order():
    from tuneforge.chat.tools import MessageError, from_openai

    def image(part, where):
        return f"/pics/{part['image_url']['url']}"

    messages, _ = from_openai([
        {"role": "user", "content": [{"type": "text", "text": "A "}, {"type": "image_url", "image_url": {"url": "1"}},
                                     {"type": "text", "text": " and "}, {"type": "image_url", "image_url": {"url": "2"}}]},
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "3"}}, {"type": "text", "text": "And?"}]},
    ], image=image)
    assert messages == [{"role": "user", "content": "A <image> and <image>", "images": ["/pics/1", "/pics/2"]},
                        {"role": "assistant", "content": "Two."},
                        {"role": "user", "content": "<image>And?", "images": ["/pics/3"]}]
    with pytest.raises(MessageError, match=r"messages\[0\].content\[0\].*'input_audio' are not supported"):
        from_openai([{"role": "user", "content": [{"type": "input_audio"}]}], image=image)


def test_api_media_variables_are_checked_before_the_model_loads(monkeypatch, tmp_path):
    import argparse

    from tuneforge.errors import TuneforgeError
    from tuneforge.plugins.apps.api import cli

    args = argparse.Namespace(config=str(tmp_path / "never-read.yaml"), host=None, port=None, overrides=[], disable_plugin=[])
    monkeypatch.setenv("API_MEDIA_DIR", str(tmp_path / "absent"))
    with pytest.raises(TuneforgeError, match="API_MEDIA_DIR=.*is not a folder"):
        cli.run(args)
    monkeypatch.setenv("API_MEDIA_DIR", str(tmp_path))
    monkeypatch.setenv("API_ALLOW_REMOTE_MEDIA", "yes")
    with pytest.raises(TuneforgeError, match="API_ALLOW_REMOTE_MEDIA='yes': use 1"):
        cli.run(args)


def test_full_dpo_with_images_gives_the_frozen_reference_the_pixels_too(vl_model, tmp_path):
    from tuneforge.plugins.stages._preference import media_inputs

    ctx = train(vl_model, tmp_path, finetuning_type="full", max_steps=2, learning_rate=1e-3, logging_steps=1)
    trainer = ctx.extras["trainer"]
    assert trainer.reference.kind == "frozen-model"
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    rows, media = (batch["input_ids"], batch["attention_mask"], batch["labels"]), media_inputs(batch)
    seen = trainer.reference_logps(trainer.model, *rows, **media).total
    blind = trainer.reference_logps(trainer.model, *rows, **{**media, "pixel_values": torch.zeros_like(media["pixel_values"])}).total
    assert ((seen - blind).abs() > 1e-4).all(), (seen, blind)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_logs(tmp_path / "out"))
