"""Training features on the tiny model: compute types, accumulation, schedulers and warmup, clipping,
NEFTune, gradient checkpointing, seed, logging/saving/evaluation cadence, trackers, and the files a run
leaves in output_dir (named as LLaMA-Factory names them)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

ROWS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(6) for b in range(6)
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    (path / "sums.json").write_text(json.dumps(ROWS))
    (path / "held_out.json").write_text(json.dumps(ROWS[:6]))
    (path / "dataset_info.json").write_text(json.dumps({
        "sums": {"file_name": "sums.json"}, "held_out": {"file_name": "held_out.json"},
    }))
    return path


def train(tiny_model, data_dir, out, **overrides):
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", dataset="sums", dataset_dir=str(data_dir),
        output_dir=str(out), cutoff_len=64, per_device_train_batch_size=4, max_steps=6, learning_rate=5e-3,
        logging_steps=1, report_to="none", disable_tqdm=True, overwrite_output_dir=True, save_steps=1000,
        finetuning_type="lora", lora_rank=4,
    )
    base.update(overrides)
    return run_training(prepare(None, [f"{k}={v}" for k, v in base.items()], manager=PluginManager(autoload=False)))


def log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def losses(out) -> list[float]:
    return [r["loss"] for r in log(out) if "loss" in r]


# --- compute type ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, frozen, trained", [
    ({}, {torch.float32}, {torch.float32}),
    ({"bf16": True}, {torch.bfloat16}, {torch.float32}),
    ({"fp16": True}, {torch.float16}, {torch.float32}),
    ({"bf16": True, "finetuning_type": "freeze", "freeze_trainable_layers": 1}, {torch.bfloat16}, {torch.float32}),
    ({"pure_bf16": True, "finetuning_type": "full", "learning_rate": 1e-3}, set(), {torch.bfloat16}),
], ids=["fp32", "bf16", "fp16", "bf16-freeze", "pure_bf16-full"])
def test_compute_types_train_on_cpu(tiny_model, data_dir, tmp_path, settings, frozen, trained):
    ctx = train(tiny_model, data_dir, tmp_path, **settings)
    params = dict(ctx.model.named_parameters())
    assert {p.dtype for p in params.values() if p.requires_grad} == trained  # LLaMA-Factory upcasts what trains ...
    assert {p.dtype for p in params.values() if not p.requires_grad} == frozen  # ... the rest stays in the compute dtype
    args = ctx.extras["trainer"].args
    assert args.bf16 == bool(settings.get("bf16")) and args.fp16 == bool(settings.get("fp16"))
    curve = losses(tmp_path)
    assert curve[-1] < curve[0], curve


def test_gradient_accumulation_matches_the_larger_batch(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path / "big", per_device_train_batch_size=4)
    train(tiny_model, data_dir, tmp_path / "acc", per_device_train_batch_size=2, gradient_accumulation_steps=2)
    big, accumulated = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert len(accumulated) == 6
    assert all(abs(a - b) < 1e-4 for a, b in zip(big, accumulated)), (big, accumulated)


# --- schedulers and warmup ---------------------------------------------------------------------------------------

SCHEDULER_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 3},
    "polynomial": {"power": 2.0},
}


def _scheduler_names():
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


@pytest.mark.parametrize("name", _scheduler_names())
def test_every_scheduler_with_warmup_ratio(tiny_model, data_dir, tmp_path, name):
    from transformers import get_scheduler

    steps, ratio = 8, 0.25
    kwargs = SCHEDULER_KWARGS.get(name, {})
    settings = {"lr_scheduler_type": name, "warmup_ratio": ratio, "max_steps": steps, "per_device_train_batch_size": 2}
    if kwargs:
        settings["lr_scheduler_kwargs"] = json.dumps(kwargs)
    if name in ("reduce_lr_on_plateau", "greedy"):  # they react to evaluation metrics
        settings.update(val_size=0.25, eval_strategy="steps", eval_steps=2)
    train(tiny_model, data_dir, tmp_path, **settings)
    logged = [r["lr"] for r in log(tmp_path) if "loss" in r]
    assert len(logged) == steps
    if name in ("reduce_lr_on_plateau", "greedy"):
        assert logged[0] == 5e-3 and all(lr <= 5e-3 for lr in logged)
        return
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=math.ceil(steps * ratio), num_training_steps=steps,
                              scheduler_specific_kwargs=kwargs)
    expected = []
    for _ in range(steps):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert logged == pytest.approx(expected), (logged, expected)
    if name not in ("constant", "cosine_warmup_with_min_lr"):  # warmup_ratio 0.25 of 8 steps: the lr rises at first
        assert logged[0] < logged[1] < logged[2]


def test_max_grad_norm_clips_the_update(tiny_model, data_dir, tmp_path):
    """With plain SGD at lr 1, one step moves the weights by exactly the clipped gradient."""
    before = {n: p.detach().clone() for n, p in _base(tiny_model).named_parameters()}
    ctx = train(tiny_model, data_dir, tmp_path, finetuning_type="full", optim="sgd", learning_rate=1.0,
                max_grad_norm=1e-3, max_steps=1)
    moved = torch.sqrt(sum(((p.detach() - before[n]) ** 2).sum() for n, p in ctx.model.named_parameters()))
    assert moved.item() == pytest.approx(1e-3, rel=1e-3)
    assert log(tmp_path)[0]["grad_norm"] > 1e-2  # the norm before clipping is what is logged


def _base(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model)


# --- NEFTune, gradient checkpointing, seed -------------------------------------------------------------------------


def test_gradient_checkpointing_is_chosen_by_the_planner_and_changes_nothing_but_memory(tiny_model, data_dir, tmp_path,
                                                                                       capsys):
    auto = train(tiny_model, data_dir, tmp_path / "auto")
    # the tiny model's planned peak fits any machine with room: no recomputation, and train says why
    assert auto.extras["trainer"].args.activation_checkpointing is False
    assert "gradient checkpointing: off (planned peak without it" in capsys.readouterr().out
    on = train(tiny_model, data_dir, tmp_path / "on", gradient_checkpointing=True)
    assert on.extras["trainer"].args.activation_checkpointing is True
    assert any(getattr(m, "gradient_checkpointing", False) for m in on.model.modules())
    off = train(tiny_model, data_dir, tmp_path / "off", disable_gradient_checkpointing=True)
    assert off.extras["trainer"].args.activation_checkpointing is False
    assert not any(getattr(m, "gradient_checkpointing", False) for m in off.model.modules())
    assert losses(tmp_path / "on") == pytest.approx(losses(tmp_path / "off"), abs=1e-6)
    assert losses(tmp_path / "auto") == pytest.approx(losses(tmp_path / "off"), abs=1e-6)
    # disable_gradient_checkpointing: false is a choice too: LLaMA-Factory's default, on
    lf = train(tiny_model, data_dir, tmp_path / "lf", disable_gradient_checkpointing=False, max_steps=1)
    assert lf.extras["trainer"].args.activation_checkpointing is True


def test_gradient_checkpointing_turns_on_when_the_plan_does_not_fit(tiny_model, data_dir, monkeypatch):
    from tuneforge.train import auto_gc

    from .test_data_pipeline import make_ctx

    ctx = make_ctx(tiny_model, data_dir, dataset="sums", per_device_train_batch_size=4)
    monkeypatch.setattr(auto_gc, "available_memory", lambda: (64 * 2**20, "available RAM"))  # a 64 MiB device
    on, why = auto_gc.choose(ctx)
    assert on and "does not fit with 25% to spare" in why
    monkeypatch.setattr(auto_gc, "available_memory", lambda: (64 * 2**30, "available RAM"))
    on, why = auto_gc.choose(ctx)
    assert not on and "fits with 25% to spare" in why


def test_seed_decides_the_run(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path / "a", seed=7)
    train(tiny_model, data_dir, tmp_path / "b", seed=7)
    train(tiny_model, data_dir, tmp_path / "c", seed=8)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_neftune_adds_noise_to_the_embeddings_while_training(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path / "plain", max_steps=2)
    ctx = train(tiny_model, data_dir, tmp_path / "neftune", max_steps=2, neftune_noise_alpha=5)
    assert losses(tmp_path / "plain")[0] != losses(tmp_path / "neftune")[0]
    # the noise hook is gone after training: generation and evaluation see clean embeddings
    hooks = ctx.model.get_input_embeddings()._forward_hooks.values()
    assert not [h for h in hooks if "neftune" in getattr(h, "__name__", "")]


# --- cadence: logging, saving, evaluation ----------------------------------------------------------------------------


def test_logging_and_saving_cadence(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path, logging_steps=2, save_steps=2, save_total_limit=2)
    assert [r["current_steps"] for r in log(tmp_path)] == [2, 4, 6]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_evaluation_during_training_with_val_size(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path, val_size=0.25, eval_strategy="steps", eval_steps=2, plot_loss=True)
    evals = [r for r in log(tmp_path) if "eval_loss" in r]
    assert [r["current_steps"] for r in evals] == [2, 4, 6]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert results["eval_loss"] == pytest.approx(evals[-1]["eval_loss"])
    assert (tmp_path / "training_loss.png").exists() and (tmp_path / "training_eval_loss.png").exists()


def test_evaluation_on_a_named_eval_dataset(tiny_model, data_dir, tmp_path):
    ctx = train(tiny_model, data_dir, tmp_path, eval_dataset="held_out", max_steps=2)
    assert len(ctx.extras["trainer"].eval_dataset) == 6
    assert "eval_loss" in json.loads((tmp_path / "eval_results.json").read_text())


# --- the files a run leaves ----------------------------------------------------------------------------------------


def test_output_dir_holds_what_llamafactory_users_expect(tiny_model, data_dir, tmp_path):
    ctx = train(tiny_model, data_dir, tmp_path, val_size=0.25, eval_strategy="steps", eval_steps=3, save_steps=3,
                plot_loss=True, include_effective_tokens_per_second=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "trainer_state.json", "trainer_log.jsonl", "train_results.json",
                 "eval_results.json", "all_results.json", "training_args.yaml", "run_manifest.json",
                 "training_loss.png", "training_eval_loss.png", "checkpoint-3", "checkpoint-6"):
        assert (tmp_path / name).exists(), name
    records = [r for r in log(tmp_path) if "loss" in r]
    assert [r["current_steps"] for r in records] == [1, 2, 3, 4, 5, 6]
    for record in records:
        assert {"current_steps", "total_steps", "loss", "lr", "epoch", "percentage", "elapsed_time",
                "remaining_time", "tokens_per_second", "throughput", "total_tokens"} <= set(record), record
        assert record["tokens_per_second"] > 0 and record["total_steps"] == 6
    assert records[-1]["percentage"] == 100.0 and records[-1]["remaining_time"] == "0:00:00"
    assert records[-1]["total_tokens"] == ctx.extras["trainer"].state.num_input_tokens_seen

    assert yaml.safe_load((tmp_path / "training_args.yaml").read_text()) == ctx.config.as_dict()
    manifest = json.loads((tmp_path / "run_manifest.json").read_text())
    assert {"torch", "transformers", "peft", "tuneforge"} <= set(manifest["versions"])
    assert manifest["datasets"][0]["path"].endswith("sums.json") and len(manifest["datasets"][0]["sha256"]) == 64
    assert {"role": "method", "name": "lora", "provider": "tuneforge 0.1.0 (built-in)"} in manifest["plan"]
    assert manifest["trainable_parameters"] == sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    train_results = json.loads((tmp_path / "train_results.json").read_text())
    assert train_results["effective_tokens_per_sec"] > 0 and "train_loss" in train_results
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 6


def test_overwrite_output_dir_clears_the_old_checkpoints(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path, save_steps=2, max_steps=4)
    train(tiny_model, data_dir, tmp_path, save_steps=3, max_steps=3)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]


def test_disable_shuffling_keeps_the_data_order(tiny_model, data_dir, tmp_path):
    ctx = train(tiny_model, data_dir, tmp_path, disable_shuffling=True, max_steps=1)
    from torch.utils.data import SequentialSampler

    assert isinstance(ctx.extras["trainer"]._get_train_sampler(), SequentialSampler)
