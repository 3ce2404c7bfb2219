"""packing and neat_packing: fewer rows, and (neat) exactly the unpacked loss on the tiny llama3 model."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.data.dataset import build_datasets
from tuneforge.data.packing import greedy_knapsack, pack_batch
from tuneforge.data.template import IGNORE_INDEX

from .test_data_pipeline import make_ctx

pytestmark = pytest.mark.usefixtures("private_cache")

# The tiny model keeps llama3's 128k vocabulary, so logits are large: keep the batches small.
ROWS = [{"instruction": f"What is {a} plus {b}?" * (1 + a % 3), "input": "", "output": f"{a} plus {b} is {a + b}."}
        for a in range(4) for b in range(3)]


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "sums.json").write_text(json.dumps(ROWS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    return tmp_path


def test_greedy_knapsack_fills_rows_without_overflow():
    lengths = [7, 3, 9, 1, 4, 4, 10, 2]
    bins = greedy_knapsack(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 40 tokens in rows of 10: the optimum


def test_pack_batch_restarts_positions_and_masks_each_samples_first_label():
    batch = {"input_ids": [[1, 2, 3], [4, 5]], "attention_mask": [[1, 1, 1], [1, 1]], "labels": [[-100, 2, 3], [4, 5]]}
    packed = pack_batch(batch, cutoff_len=8, neat=True)
    assert packed["input_ids"] == [[1, 2, 3, 4, 5]]
    assert packed["position_ids"] == [[0, 1, 2, 0, 1]]
    assert packed["labels"] == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]
    assert "position_ids" not in pack_batch(batch, cutoff_len=8, neat=False)


def _loss(model, splits):
    batch = splits.collator([splits.train[i] for i in range(len(splits.train))])
    with torch.no_grad():
        return model(**batch).loss.item(), batch


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_neat_packed_loss_equals_unpacked_loss(tiny_model, dataset_dir, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn)
    model.train()  # as the trainer runs it (the tiny model has no dropout); use_cache stays at its default
    unpacked = build_datasets(make_ctx(tiny_model, dataset_dir, dataset="sums", cutoff_len=100), "supervised")
    neat = build_datasets(make_ctx(tiny_model, dataset_dir, dataset="sums", cutoff_len=100, neat_packing=True), "supervised")
    packed = build_datasets(make_ctx(tiny_model, dataset_dir, dataset="sums", cutoff_len=100, packing=True), "supervised")
    assert len(unpacked.train) == len(ROWS) and len(neat.train) <= len(ROWS) / 2 and len(packed.train) == len(neat.train)

    reference, _ = _loss(model, unpacked)
    neat_loss, batch = _loss(model, neat)
    assert "attention_mask" not in batch and batch["position_ids"][0][0] == 0 and batch["use_cache"] is False
    assert neat_loss == pytest.approx(reference, abs=1e-5)
    # the same tokens packed without the per-sample mask attend across samples: the loss moves
    plain_loss, _ = _loss(model, packed)
    assert abs(plain_loss - reference) > 1e-4
    # same trained tokens in all three
    count = lambda s: sum(sum(t != IGNORE_INDEX for t in row[1:]) for row in s.train["labels"])  # noqa: E731
    assert count(unpacked) == count(neat) == count(packed)


def test_neat_packing_trains_through_the_trainer(tiny_model, dataset_dir, tmp_path):
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.pipeline import run_training

    args = dict(model_name_or_path=str(tiny_model), template="llama3", dataset="sums", dataset_dir=str(dataset_dir),
                output_dir=str(tmp_path / "out"), cutoff_len=128, neat_packing=True, per_device_train_batch_size=2,
                max_steps=2, report_to="none", disable_tqdm=True, finetuning_type="lora")
    ctx = run_training(prepare(None, [f"{k}={v}" for k, v in args.items()], manager=PluginManager(autoload=False)))
    assert ctx.metrics["train_loss"] > 0
