"""`tuneforge expand` (LLaMA Pro, LLaMA-Factory's scripts/llama_pro.py): the expanded model reloads with
the original's logits, and freeze tuning with use_llama_pro trains only the added blocks."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.cli.main import main

from .test_conformance_keys import data_dir, train  # noqa: F401  (data_dir is a fixture)

IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12, 64, 3]])


@pytest.fixture(scope="module")
def expanded(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("expanded") / "llama-pro"
    assert main(["expand", "--model_name_or_path", str(tiny_model), "--output_dir", str(out), "--num_expand", "2"]) == 0
    return out


def test_expand_adds_zero_output_blocks_with_the_same_logits(tiny_model, expanded, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    grown = AutoModelForCausalLM.from_pretrained(expanded).eval()
    layers = base.config.num_hidden_layers
    assert grown.config.num_hidden_layers == 2 * layers  # tiny: 2 layers + 2 blocks
    with torch.no_grad():
        assert torch.allclose(grown(IDS).logits, base(IDS).logits, atol=1e-6)
    # Blocks 1 and 3 are the new ones (after each half): copies of the block before, with zero output projections.
    new = grown.model.layers
    for i, source in ((1, 0), (3, 1)):
        assert not new[i].self_attn.o_proj.weight.any() and not new[i].mlp.down_proj.weight.any()
        assert torch.equal(new[i].self_attn.q_proj.weight, base.model.layers[source].self_attn.q_proj.weight)
        assert new[i].self_attn.layer_idx == i
    for i, source in ((0, 0), (2, 1)):
        assert torch.equal(new[i].mlp.down_proj.weight, base.model.layers[source].mlp.down_proj.weight)
    assert AutoTokenizer.from_pretrained(expanded).get_vocab() == AutoTokenizer.from_pretrained(tiny_model).get_vocab()
    # A generation run with the KV cache sees the same tokens (layer_idx of each block is its new place).
    first = base.generate(IDS, max_new_tokens=5, do_sample=False)
    assert torch.equal(grown.generate(IDS, max_new_tokens=5, do_sample=False), first)


def test_expand_refuses_a_num_expand_that_does_not_divide_the_layers(tiny_model, tmp_path, capsys):
    assert main(["expand", "--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path / "x"),
                 "--num_expand", "3"]) == 2
    err = capsys.readouterr().err
    assert "error: expand: --num_expand 3 must be a positive divisor of the model's 2 layers (e.g. 1, 2)" in err
    assert not (tmp_path / "x").exists()


def test_use_llama_pro_trains_only_the_expanded_blocks(expanded, data_dir, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    out = tmp_path / "run"
    train(expanded, data_dir, out, finetuning_type="freeze", use_llama_pro=True, freeze_trainable_layers=2,
          max_steps=2)
    before, after = load_file(expanded / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "nothing trained"
    assert {name.split(".")[2] for name in changed} == {"1", "3"}, sorted(changed)
    assert all(name.startswith("model.layers.") for name in changed)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4


def test_expand_grows_per_layer_config_lists(tmp_path):
    """qwen3's config lists each layer's attention type (layer_types): the new blocks get their source's."""
    from transformers import AutoModelForCausalLM

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    qwen3 = cached_tiny_model("qwen3", "tiny")
    out = tmp_path / "qwen3-pro"
    assert main(["expand", "--model_name_or_path", str(qwen3), "--output_dir", str(out), "--num_expand", "1"]) == 0
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(qwen3).eval()
    assert len(grown.config.layer_types) == grown.config.num_hidden_layers == base.config.num_hidden_layers + 1
    with torch.no_grad():
        assert torch.allclose(grown(IDS).logits, base(IDS).logits, atol=1e-6)


def test_expand_refuses_bin_files(tiny_model, tmp_path, capsys):
    assert main(["expand", "--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path / "x"),
                 "--save_safetensors", "false"]) == 2
    assert "error: expand: --save_safetensors false asks for PyTorch .bin files" in capsys.readouterr().err
