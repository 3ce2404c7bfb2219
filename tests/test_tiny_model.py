"""The offline tiny-model builder: sizes, tokenizers, chat templates, determinism and the cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from tuneforge.plugins.apps.tiny_model.builder import FAMILIES, SIZES, build_tiny_model, cached_tiny_model  # noqa: E402

SYSTEM = "You are a test bot."
USER = "Say hi 你好"
ANSWER = "Hi there! 你好！"
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER},
    {"role": "assistant", "content": ANSWER},
]

# Exact renderings of CONVERSATION (full) and of its first two messages with a generation prompt,
# as the real Hugging Face templates of each family produce them.
EXPECTED = {
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a test bot.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSay hi 你好<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi there! 你好！<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "qwen2": (
        "<|im_start|>system\nYou are a test bot.<|im_end|>\n<|im_start|>user\nSay hi 你好<|im_end|>\n"
        "<|im_start|>assistant\nHi there! 你好！<|im_end|>\n",
        "<|im_start|>assistant\n",
    ),
    "qwen3": (
        # The last assistant turn after the last user query carries an (empty) think block.
        "<|im_start|>system\nYou are a test bot.<|im_end|>\n<|im_start|>user\nSay hi 你好<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHi there! 你好！<|im_end|>\n",
        "<|im_start|>assistant\n",
    ),
    "mistral": (
        "<s>[INST] You are a test bot.\n\nSay hi 你好[/INST] Hi there! 你好！</s>",
        "[/INST]",
    ),
    "gemma": (
        "<bos><start_of_turn>user\nYou are a test bot.\n\nSay hi 你好<end_of_turn>\n"
        "<start_of_turn>model\nHi there! 你好！<end_of_turn>\n",
        "<start_of_turn>model\n",
    ),
}

# family -> (bos, eos, pad, tokens that must each encode to one id, generation-config stop tokens)
TOKENS = {
    "llama3": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
         "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"],
        {"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"},
    ),
    "qwen2": (
        None,
        "<|im_end|>",
        "<|endoftext|>",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"],
        {"<|im_end|>", "<|endoftext|>"},
    ),
    "qwen3": (
        None,
        "<|im_end|>",
        "<|endoftext|>",
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"],
        {"<|im_end|>", "<|endoftext|>"},
    ),
    "mistral": (
        "<s>",
        "</s>",
        "<unk>",
        ["<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
         "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
        {"</s>"},
    ),
    "gemma": (
        "<bos>",
        "<end_of_turn>",
        "<pad>",
        ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
        {"<end_of_turn>", "<eos>"},
    ),
}

CHINESE = "你好，世界！我是一个人工智能助手。混合 text with 数字 12345 and emoji 🤖, café."


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(root / family, family=family, size="tiny") for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(built):
    """(model, tokenizer) per family, each loaded once through the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {
        family: (AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))
        for family, path in built.items()
    }


def test_constants():
    assert FAMILIES == ("llama3", "qwen2", "qwen3", "mistral", "gemma")
    assert SIZES == ("tiny", "small")


def test_module_import_does_not_import_torch():
    code = "import sys, tuneforge.plugins.apps.tiny_model.builder; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unknown_family_or_size(tmp_path):
    with pytest.raises(ValueError, match="family"):
        build_tiny_model(tmp_path / "x", family="gpt2")
    with pytest.raises(ValueError, match="size"):
        build_tiny_model(tmp_path / "y", size="huge")


@pytest.mark.parametrize("family", FAMILIES)
def test_files_and_model(family, built, loaded):
    import torch

    names = {p.name for p in built[family].iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    model, tokenizer = loaded[family]
    expected_arch = {"llama3": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral", "gemma": "Gemma"}
    assert type(model).__name__ == f"{expected_arch[family]}ForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n_params <= 5_000_000, n_params
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.max_position_embeddings == 2048
    assert model.config.vocab_size >= len(tokenizer)

    ids = tokenizer(USER, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_special_tokens(family, loaded):
    model, tokenizer = loaded[family]
    bos, eos, pad, single, stops = TOKENS[family]
    for token in single:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, (token, ids)
        assert tokenizer.decode(ids) == token
    assert tokenizer.bos_token == bos
    assert tokenizer.eos_token == eos
    assert tokenizer.pad_token == pad
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

    gen = model.generation_config
    stop_ids = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert set(tokenizer.convert_ids_to_tokens(stop_ids)) == stops
    assert gen.pad_token_id == tokenizer.pad_token_id
    assert gen.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id

    # BOS on plain encoding exactly where the real tokenizer adds it; never with add_special_tokens=False.
    plain = tokenizer("hello")["input_ids"]
    bare = tokenizer("hello", add_special_tokens=False)["input_ids"]
    if bos is None:
        assert plain == bare
    else:
        assert plain == [tokenizer.bos_token_id, *bare]
        assert tokenizer.bos_token_id not in bare


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template(family, loaded):
    _, tokenizer = loaded[family]
    full, header = EXPECTED[family]
    assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == full

    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(header)
    assert SYSTEM in prompt and USER in prompt and ANSWER not in prompt
    # The rendered prompt is a prefix of the full conversation (training and inference agree).
    assert full.startswith(prompt)

    # Tokenising the chat adds no second BOS: the template's own BOS is the only one.
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    if tokenizer.bos_token_id is not None:
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids) == full


def test_qwen_family_specifics(loaded):
    _, qwen2 = loaded["qwen2"]
    _, qwen3 = loaded["qwen3"]
    user_only = [{"role": "user", "content": "hi"}]
    assert qwen2.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert qwen3.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    no_think = qwen3.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # Reasoning of earlier turns is dropped; <think> and <tool_call> survive skip_special_tokens.
    history = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nr1\n</think>\n\na1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "<think>\nr2\n</think>\n\na2"},
    ]
    rendered = qwen3.apply_chat_template(history, tokenize=False)
    assert "r1" not in rendered and "<think>\nr2\n</think>\n\na2<|im_end|>" in rendered
    ids = qwen3.encode("<|im_start|>assistant\n<think>\nx\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>")
    assert qwen3.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nx\n</think>\n\n<tool_call>\n{}\n</tool_call>"


def test_mistral_and_gemma_fold_system_into_first_user_turn(loaded):
    conv = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    _, mistral = loaded["mistral"]
    _, gemma = loaded["gemma"]
    assert mistral.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == (
        "<s>[INST] S\n\nu1[/INST] a1</s>[INST] u2[/INST]"
    )
    assert gemma.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nS\n\nu1<end_of_turn>\n<start_of_turn>model\na1<end_of_turn>\n"
        "<start_of_turn>user\nu2<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_chinese_round_trip(family, loaded):
    _, tokenizer = loaded[family]
    ids = tokenizer.encode(CHINESE, add_special_tokens=False)
    assert tokenizer.decode(ids) == CHINESE
    # The BPE learned merges from the Chinese part of the corpus: fewer ids than UTF-8 bytes.
    phrase = "我是一个人工智能助手"
    assert len(tokenizer.encode(phrase, add_special_tokens=False)) < len(phrase.encode())


def test_build_is_deterministic(tmp_path, built):
    first = _sha256_tree(built["llama3"])
    again = _sha256_tree(build_tiny_model(tmp_path / "again", family="llama3", size="tiny"))
    assert first == again
    assert set(first) >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    other_seed = _sha256_tree(build_tiny_model(tmp_path / "seed1", family="llama3", size="tiny", seed=1))
    assert other_seed["model.safetensors"] != first["model.safetensors"]
    assert other_seed["tokenizer.json"] == first["tokenizer.json"]


def test_build_does_not_disturb_global_rng(tmp_path):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", family="qwen2", size="tiny", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_cached_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_TINY_CACHE", str(tmp_path))
    path = cached_tiny_model("qwen3", "tiny")
    assert path == tmp_path / "qwen3-tiny-v1"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert cached_tiny_model("qwen3", "tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen3-tiny-v1"]  # no temp dirs left behind
    # Same bytes as a direct seed-0 build.
    assert _sha256_tree(path) == _sha256_tree(build_tiny_model(tmp_path / "direct", family="qwen3"))


def test_small_size(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path / "small", family="llama3", size="small")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 20_000_000 <= n_params <= 40_000_000, n_params
    ids = tokenizer(CHINESE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
