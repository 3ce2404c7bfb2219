"""Padding-free batching: flattened rows give the padded batch's loss, step for step, on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.padding_free import IGNORE_INDEX, FlatteningCollator, model_problem
from tuneforge.train.pipeline import run_training

# rows of very different lengths, so a padded batch of 4 is mostly padding
ROWS = [{"instruction": f"What is {a} plus {b}?" + " Think carefully." * (a % 4 * 3), "input": "",
         "output": f"{a} plus {b} is {a + b}." + " Done." * (b % 3)}
        for a in range(6) for b in range(4)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    (path / "sums.json").write_text(json.dumps(ROWS))
    (path / "text.json").write_text(json.dumps([{"text": r["instruction"] + " " + r["output"]} for r in ROWS]))
    (path / "dataset_info.json").write_text(json.dumps({
        "sums": {"file_name": "sums.json"}, "text": {"file_name": "text.json", "columns": {"prompt": "text"}},
    }))
    return path


def train(tiny_model, data_dir, out, **overrides):
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", dataset="sums", dataset_dir=str(data_dir),
        output_dir=str(out), cutoff_len=96, per_device_train_batch_size=4, max_steps=3, learning_rate=5e-3,
        logging_steps=1, report_to="none", disable_tqdm=True, overwrite_output_dir=True, save_steps=1000,
        finetuning_type="lora", lora_rank=4, disable_gradient_checkpointing=True,
    )
    base.update(overrides)
    return run_training(prepare(None, [f"{k}={v}" for k, v in base.items()], manager=PluginManager(autoload=False)))


def step_losses(ctx) -> list[float]:
    return [r["loss"] for r in ctx.extras["trainer"].state.log_history if "loss" in r]


def test_collator_concatenates_rows_restarts_positions_and_masks_each_first_label():
    batch = FlatteningCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert "cu_seq_lens_q" not in batch
    bounded = FlatteningCollator(0, boundaries=True)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    assert bounded["cu_seq_lens_q"].tolist() == bounded["cu_seq_lens_k"].tolist() == [0, 3, 5]
    assert bounded["max_length_q"] == bounded["max_length_k"] == 3


def test_sdpa_per_row_keeps_rows_apart_from_the_boundaries_alone(tiny_model):
    """row_attention.py: the flattened loss equals the padded one with the rows' own sdpa calls. Without
    the position restarts (so masking_utils' mask is causal over the whole batch) only the boundaries
    keep rows apart: RoPE attention depends on relative positions, so shifted rows give the same loss,
    and plain sdpa on the same inputs leaks across rows (the check can fail)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collator import PadCollator
    from tuneforge.train import row_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in (30, 5, 52, 11)]
    features = [{"input_ids": r, "labels": [IGNORE_INDEX] * 2 + r[2:]} for r in rows]
    flat = FlatteningCollator(0, boundaries=True)(features)
    without_restarts = {k: v for k, v in flat.items() if k != "position_ids"}
    with torch.no_grad():
        padded = model(**PadCollator(0)(features)).loss.item()
        leaky = model(**without_restarts).loss.item()
        model.set_attn_implementation(row_attention.register())
        per_row = model(**flat).loss.item()
        per_row_no_restarts = model(**without_restarts).loss.item()
        # a padded batch (attention mask, no boundaries) is transformers' sdpa unchanged
        padded_again = model(**PadCollator(0)(features)).loss.item()
    assert per_row == pytest.approx(padded, abs=1e-5)
    assert per_row_no_restarts == pytest.approx(padded, abs=1e-4)
    assert abs(leaky - padded) > 1e-3
    assert padded_again == pytest.approx(padded, abs=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flattened_forward_equals_padded_forward(tiny_model, attn):
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collator import PadCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn)
    assert model_problem(model) is None
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in (17, 3, 40, 9)]
    features = [{"input_ids": r, "labels": [IGNORE_INDEX] * 2 + r[2:]} for r in rows]
    with torch.no_grad():
        padded = model(**PadCollator(0)(features)).loss
        flat_batch = FlatteningCollator(0)(features)
        flat = model(**flat_batch).loss
        # the same tokens without the restarts attend across rows: the loss moves (the check can fail)
        leaky = model(input_ids=flat_batch["input_ids"], labels=flat_batch["labels"]).loss
    assert flat.item() == pytest.approx(padded.item(), abs=1e-5)
    assert abs(leaky.item() - padded.item()) > 1e-3


def test_sdpa_per_row_keeps_a_sliding_window_for_rows_longer_than_it():
    """A sliding-window model (Mistral, window 8 here) with rows longer than the window: each row gets its
    own window mask, so the per-row loss still equals transformers' padded one (which masks by window)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.data.collator import PadCollator
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model
    from tuneforge.train import row_attention

    model = AutoModelForCausalLM.from_pretrained(cached_tiny_model("mistral"), dtype=torch.float32, attn_implementation="sdpa")
    model.config.sliding_window = 8
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in (30, 5, 21)]
    features = [{"input_ids": r, "labels": [IGNORE_INDEX] * 2 + r[2:]} for r in rows]
    with torch.no_grad():
        padded = model(**PadCollator(0)(features)).loss.item()
        model.set_attn_implementation(row_attention.register())
        per_row = model(**FlatteningCollator(0, boundaries=True)(features)).loss.item()
        model.config.sliding_window = None
        unwindowed = model(**FlatteningCollator(0, boundaries=True)(features)).loss.item()
    assert per_row == pytest.approx(padded, abs=1e-5)
    assert abs(unwindowed - padded) > 1e-4  # the window matters for these rows: the check can fail


def test_models_with_state_across_tokens_are_refused():
    from transformers import JambaConfig, JambaForCausalLM

    config = JambaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, num_experts=1, mamba_d_state=4, mamba_expand=1, use_mamba_kernels=False)
    problem = model_problem(JambaForCausalLM(config))
    assert problem is not None and "mamba" in problem


def test_training_runs_the_attention_per_row_with_the_batch_boundaries(tiny_model, data_dir, tmp_path, monkeypatch):
    """Every forward of training goes through row_attention.rows_attention with its batch's four rows (a
    spy around the real function: what it computes is unchanged), not through plain sdpa."""
    from tuneforge.train import row_attention
    from tuneforge.train.fused_loss import base_model

    rows_seen = []
    real = row_attention.rows_attention

    def spy(module, query, key, value, attention_mask, **kwargs):
        bounds = kwargs.get("cu_seq_lens_q")
        rows_seen.append(None if bounds is None else len(bounds) - 1)
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(row_attention, "rows_attention", spy)  # register() hands transformers this one
    ctx = train(tiny_model, data_dir, tmp_path / "flat", max_steps=2)
    layers = base_model(ctx.model).config.num_hidden_layers
    assert rows_seen == [4] * (2 * layers)
    assert base_model(ctx.model).config._attn_implementation == "sdpa"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"finetuning_type": "lora"},
    {"finetuning_type": "full", "learning_rate": 1e-3},
    {"stage": "pt", "dataset": "text", "finetuning_type": "lora"},
], ids=["sft-lora", "sft-full", "pt-lora"])
def test_per_step_losses_equal_the_padded_run(tiny_model, data_dir, tmp_path, capsys, overrides):
    padded = train(tiny_model, data_dir, tmp_path / "padded", padding_free=False, **overrides)
    assert padded.extras["trainer"].tuneforge_train_collator is None
    flat = train(tiny_model, data_dir, tmp_path / "flat", **overrides)  # on by default
    trainer = flat.extras["trainer"]
    assert isinstance(trainer.tuneforge_train_collator, FlatteningCollator)
    assert "padding-free batching: on" in capsys.readouterr().out
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist()[-1] == batch["input_ids"].shape[1]
    # attention ran per row while training (row_attention.py); the model is sdpa again afterwards
    assert trainer.model.config._attn_implementation == "sdpa"
    assert any(type(c).__name__ == "PlainAttentionAfterTraining" for c in trainer.callback_handler.callbacks)
    assert len(step_losses(flat)) == 3
    assert step_losses(flat) == pytest.approx(step_losses(padded), abs=1e-5)
    # the same non-pad tokens were counted
    assert trainer.state.num_input_tokens_seen == padded.extras["trainer"].state.num_input_tokens_seen


@pytest.mark.slow
def test_evaluation_stays_padded_and_gives_the_same_eval_loss(tiny_model, data_dir, tmp_path):
    padded = train(tiny_model, data_dir, tmp_path / "padded", padding_free=False, val_size=4, eval_strategy="steps",
                   eval_steps=3, per_device_eval_batch_size=4)
    flat = train(tiny_model, data_dir, tmp_path / "flat", val_size=4, eval_strategy="steps", eval_steps=3,
                 per_device_eval_batch_size=4)
    assert "attention_mask" in next(iter(flat.extras["trainer"].get_eval_dataloader()))
    assert flat.metrics["eval_loss"] == pytest.approx(padded.metrics["eval_loss"], abs=1e-5)


def test_padding_free_true_says_why_it_cannot_be_exact(tiny_model, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="padding_free: true cannot be exact here: packing"):
        train(tiny_model, data_dir, tmp_path / "out", padding_free=True, neat_packing=True, max_steps=1)


def test_packing_and_batch_size_one_stay_as_they_are(tiny_model, data_dir, tmp_path, capsys):
    ctx = train(tiny_model, data_dir, tmp_path / "packed", neat_packing=True, max_steps=1)
    assert ctx.extras["trainer"].tuneforge_train_collator is None
    assert "padding-free batching: off (packing already fills the rows)" in capsys.readouterr().out
    ctx = train(tiny_model, data_dir, tmp_path / "one", per_device_train_batch_size=1, max_steps=1)
    assert ctx.extras["trainer"].tuneforge_train_collator is None


def test_group_by_length_batches_rows_of_similar_length(tiny_model, data_dir, tmp_path):
    ctx = train(tiny_model, data_dir, tmp_path / "grouped", group_by_length=True, padding_free=False, max_steps=1)
    trainer = ctx.extras["trainer"]
    assert trainer.args.train_sampling_strategy == "group_by_length"
    loader = trainer.get_train_dataloader()

    def pad_share(batches):
        total = sum(b["attention_mask"].numel() for b in batches)
        return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / total

    grouped = list(loader)
    shuffled = list(train(tiny_model, data_dir, tmp_path / "plain", padding_free=False, max_steps=1)
                    .extras["trainer"].get_train_dataloader())
    assert pad_share(grouped) < pad_share(shuffled)
