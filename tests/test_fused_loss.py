"""The chunked linear + cross-entropy loss: the plain loss and gradients to 1e-5, without full logits."""

from __future__ import annotations


import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.train.fused_loss import IGNORE_INDEX, linear_cross_entropy

from .test_padding_free import data_dir, step_losses, train  # noqa: F401  (data_dir is a fixture)


def _plain(hidden, weight, targets, bias=None, divisor=None):
    logits = (hidden @ weight.t()).float()
    if bias is not None:
        logits = logits + bias
    total = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (divisor if divisor is not None else (targets != IGNORE_INDEX).sum())


@pytest.mark.parametrize("with_bias, divisor, chunk", [(False, None, 7), (True, 11, 3), (False, 5, 1000)])
def test_loss_and_gradients_equal_the_plain_loss(with_bias, divisor, chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(300, 16, generator=g).requires_grad_()
    bias = torch.randn(300, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, 300, (40,), generator=g)
    targets[::3] = IGNORE_INDEX
    fused = linear_cross_entropy(hidden, weight, targets, bias, divisor=divisor, chunk_rows=chunk)
    (2 * fused).backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias) if t is not None]
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    plain = _plain(hidden, weight, targets, bias, divisor)
    (2 * plain).backward()
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    for got, want in zip(grads, [t.grad for t in (hidden, weight, bias) if t is not None]):
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert grads[0][::3].abs().max() == 0  # rows without a target get no gradient


def test_frozen_head_gets_no_gradient_and_rows_without_targets_cost_nothing():
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(50, 8)  # frozen (LoRA leaves the head alone)
    targets = torch.full((6,), IGNORE_INDEX)
    targets[2] = 7
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    assert loss.item() == pytest.approx(_plain(hidden, weight, targets).item(), abs=1e-6)
    assert weight.grad is None and hidden.grad[[0, 1, 3, 4, 5]].abs().max() == 0


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"finetuning_type": "lora"},
    {"finetuning_type": "full", "learning_rate": 1e-3},
    {"stage": "pt", "dataset": "text", "finetuning_type": "full", "learning_rate": 1e-3},
], ids=["sft-lora", "sft-full", "pt-full"])
def test_per_step_losses_equal_the_plain_loss(tiny_model, data_dir, tmp_path, capsys, overrides):  # noqa: F811
    plain = train(tiny_model, data_dir, tmp_path / "plain", fused_loss=False, **overrides)
    fused = train(tiny_model, data_dir, tmp_path / "fused", fused_loss=True, **overrides)
    assert "fused linear + cross-entropy loss: on" in capsys.readouterr().out
    assert getattr(fused.model.get_base_model() if hasattr(fused.model, "get_base_model") else fused.model,
                   "_tuneforge_fused_loss", False)
    assert step_losses(fused) == pytest.approx(step_losses(plain), abs=1e-5)
    # the saved weights keep their names (the head was not replaced)
    if overrides["finetuning_type"] == "full":
        from safetensors import safe_open

        with safe_open(str(tmp_path / "fused" / "model.safetensors"), "pt") as f:
            names = set(f.keys())
        with safe_open(str(tmp_path / "plain" / "model.safetensors"), "pt") as f:
            assert names == set(f.keys())


def test_small_vocabularies_keep_the_plain_loss_by_default(tiny_model, data_dir, tmp_path, capsys):  # noqa: F811
    train(tiny_model, data_dir, tmp_path / "out", max_steps=1)
    assert "fused linear + cross-entropy loss: off (a 2,048-token vocabulary has small logits)" in capsys.readouterr().out


def test_eval_mode_and_generation_see_real_logits(tiny_model, data_dir, tmp_path):  # noqa: F811
    ctx = train(tiny_model, data_dir, tmp_path / "out", max_steps=1, fused_loss=True)
    model = ctx.model
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape[-1] == model.config.vocab_size
    model.train()
    with torch.no_grad():  # no gradients wanted: the plain path
        assert model(input_ids=ids, labels=ids).logits.shape[-1] == model.config.vocab_size
    fused = model(input_ids=ids, labels=ids)
    assert fused.logits is None and fused.loss.requires_grad


def test_fused_loss_true_says_why_it_cannot_be_exact(tiny_model, data_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="fused_loss: true cannot be exact here: label smoothing"):
        train(tiny_model, data_dir, tmp_path / "out", fused_loss=True, label_smoothing_factor=0.1, max_steps=1)


def test_default_chunks_of_a_128k_head_are_small_and_exact():
    """A Llama-3-sized head is chunked by memory (64 MiB of logits per chunk, not 1024 rows: 512 MiB),
    and the loss and hidden-state gradient still equal the plain loss."""
    import torch

    from tuneforge.train.fused_loss import CHUNK_BYTES, chunk_rows_for

    vocab = 128_256
    assert chunk_rows_for(vocab) * vocab * 4 <= CHUNK_BYTES and chunk_rows_for(vocab) >= 16
    assert chunk_rows_for(2048) == 1024
    torch.manual_seed(0)
    hidden = torch.randn(200, 8, requires_grad=True)
    weight = torch.randn(vocab, 8) * 0.1
    targets = torch.randint(0, vocab, (200,))
    targets[::4] = -100
    fused = linear_cross_entropy(hidden, weight, targets)  # 150 target rows: two chunks
    fused.backward()
    grad_fused = hidden.grad.clone()
    hidden.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    plain.backward()
    assert abs(fused.item() - plain.item()) < 1e-5
    assert torch.allclose(grad_fused, hidden.grad, atol=1e-6)
