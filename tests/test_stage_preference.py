"""The dpo and kto stages on the tiny model, on CPU: every dpo loss learns the demo pairs, the reference
model is what the docs say it is (and costs no second copy with LoRA), kto learns the demo and copes
with one-sided batches, LLaMA-Factory's example configs run, and `check` rejects what cannot work."""

from __future__ import annotations

import gc
import json
import math
import os

import pytest
import torch

from tuneforge import Requirement
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

from .conftest import ANCHOR, REPO, run_cli

DEMO_DATA = REPO / "data"
#: Subprocesses (run_cli) compute on one thread too.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread computes them fastest, and on a machine shared with other work
    torch's worker threads wait on each other (measured 10x slower with 2 threads on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def settings(tiny_model, tmp_path, **overrides) -> list[str]:
    """A small, fast run on the demo pairs: 8 pairs in batches of 4, so each logged point (every 2 steps)
    averages one pass over the same pairs and the trend is not noise."""
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", stage="dpo", dataset="dpo_en_demo",
        dataset_dir=str(DEMO_DATA), output_dir=str(tmp_path / "out"), cutoff_len=64, max_samples=8,
        per_device_train_batch_size=4, max_steps=12, learning_rate=5e-3, lora_rank=8, logging_steps=2,
        report_to="none", disable_tqdm=True, overwrite_output_dir=True,
    )
    base.update(overrides)
    return [f"{k}={v}" for k, v in base.items()]


def train(tiny_model, tmp_path, **overrides):
    return run_training(prepare(None, settings(tiny_model, tmp_path, **overrides), manager=PluginManager(autoload=False)))


def train_logs(output_dir) -> list[dict]:
    """The training records of trainer_log.jsonl (loss and the stage's metrics, one line per log)."""
    records = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r]


def trainer_history(output_dir) -> list[dict]:
    """The same records as the Trainer keeps them in trainer_state.json."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [h for h in history if "loss" in h]


def early_late(values: list[float]) -> tuple[float, float]:
    return sum(values[:2]) / 2, sum(values[-2:]) / 2


def a_batch(trainer, rows: int = 4) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])


def base_logps(model_path, batch):
    from transformers import AutoModelForCausalLM

    from tuneforge.plugins.stages._preference import forward_logps

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        return forward_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def alive_parameters() -> dict[int, torch.nn.Parameter]:
    gc.collect()
    return {id(o): o for o in gc.get_objects() if isinstance(o, torch.Tensor) and isinstance(o, torch.nn.Parameter)}


# --- dpo ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sigmoid", "hinge", "ipo", "orpo", "simpo"])
def test_dpo_loss_falls_and_margins_rise(loss, tiny_model, tmp_path):
    ctx = train(tiny_model, tmp_path, pref_loss=loss)
    out = tmp_path / "out"
    logs = train_logs(out)
    assert len(logs) == 6
    assert [h["rewards/margins"] for h in trainer_history(out)] == pytest.approx([h["rewards/margins"] for h in logs])
    loss_before, loss_after = early_late([h["loss"] for h in logs])
    assert loss_after < loss_before, [h["loss"] for h in logs]
    margin_before, margin_after = early_late([h["rewards/margins"] for h in logs])
    assert margin_after > margin_before, [h["rewards/margins"] for h in logs]
    for record in logs:
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(record)
        assert record["rewards/margins"] == pytest.approx(record["rewards/chosen"] - record["rewards/rejected"], abs=1e-4)
        assert 0 <= record["rewards/accuracies"] <= 1
    if loss == "orpo":
        assert {"odds_ratio_loss", "sft_loss", "log_odds_ratio"} <= set(logs[0])
    reference = ctx.extras["trainer"].reference
    assert reference.kind == ("none" if loss in ("orpo", "simpo") else "adapter-disabled")
    assert (out / "adapter_model.safetensors").exists()


def test_lora_reference_is_the_policy_with_its_adapter_off_and_no_second_copy(tiny_model, tmp_path):
    before = alive_parameters()
    ctx = train(tiny_model, tmp_path, max_steps=4, val_size=2, eval_strategy="steps", eval_steps=4)
    trainer = ctx.extras["trainer"]
    # Every parameter the run created and still holds, counted from the objects alive, not from the model:
    # exactly the base model's and the adapter's, so no reference copy exists anywhere.
    new = [p for i, p in alive_parameters().items() if i not in before]
    base_count = ctx.extras["total_parameters"] - ctx.extras["trainable_parameters"]
    adapter_count = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in new) == base_count + adapter_count
    from transformers import AutoModelForCausalLM

    assert base_count == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert trainer.reference.kind == "adapter-disabled" and trainer.reference.model is None
    modules = [v for v in vars(trainer).values() if isinstance(v, torch.nn.Module)]
    assert modules and all(m is ctx.model for m in modules)
    # The reference scores are the base model's (adapter off); the trained policy's are not.
    batch = a_batch(trainer)
    rows = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    reference = trainer.reference_logps(ctx.model, *rows)
    expected = base_logps(tiny_model, batch)
    assert torch.allclose(reference.total, expected.total, atol=1e-4), (reference.total, expected.total)
    assert torch.equal(reference.tokens, expected.tokens) and bool((expected.tokens > 0).all())
    with torch.no_grad():
        policy = trainer.policy_logps(ctx.model.eval(), *rows)
    assert not torch.allclose(policy.total, expected.total, atol=1e-2)
    # evaluation reports the loss and the reward metrics, eval_-prefixed
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert {"eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_rewards/chosen"} <= set(results)


def test_full_tuning_uses_a_frozen_reference_copy_that_stays_unchanged(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    ctx = train(tiny_model, tmp_path, finetuning_type="full", learning_rate=1e-3, max_steps=4)
    trainer = ctx.extras["trainer"]
    reference = trainer.reference
    assert reference.kind == "frozen-model" and reference.model is not ctx.model
    assert not reference.model.training and not any(p.requires_grad for p in reference.model.parameters())
    policy_storage = {p.data_ptr() for p in ctx.model.parameters()}
    assert not policy_storage & {p.data_ptr() for p in reference.model.parameters()}
    original = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = reference.model.state_dict()
    assert set(after) == set(original) and all(torch.equal(after[k], original[k]) for k in original)
    trained = ctx.model.state_dict()
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # the policy did move
    # and its reference scores are the original model's
    batch = a_batch(trainer)
    scores = trainer.reference_logps(ctx.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert torch.allclose(scores.total, base_logps(tiny_model, batch).total, atol=1e-4)


def test_ref_model_with_adapters_is_the_reference_and_makes_pissa_possible(tiny_model, tmp_path):
    """PiSSA needs an explicit reference; ref_model + ref_model_adapters is loaded frozen, adapter applied."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter_dir = tmp_path / "ref-adapter"
    torch.manual_seed(0)
    with_adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                  LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with_adapter.save_pretrained(adapter_dir)
    ctx = train(tiny_model, tmp_path, finetuning_type="pissa", pissa_iter=-1, max_steps=2,
                ref_model=str(tiny_model), ref_model_adapters=str(adapter_dir))
    trainer = ctx.extras["trainer"]
    reference = trainer.reference
    assert reference.kind == "frozen-model" and str(adapter_dir) in reference.description
    assert not any(p.requires_grad for p in reference.model.parameters())
    batch = a_batch(trainer)
    rows = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    from tuneforge.plugins.stages._preference import forward_logps

    with torch.no_grad():
        expected = forward_logps(with_adapter.eval(), *rows)
    assert torch.allclose(trainer.reference_logps(ctx.model, *rows).total, expected.total, atol=1e-4)
    assert not torch.allclose(expected.total, base_logps(tiny_model, batch).total, atol=1e-2)  # the adapter counts


# --- kto ------------------------------------------------------------------------------------------------------


def test_kto_loss_falls_on_the_demo(tiny_model, tmp_path):
    ctx = train(tiny_model, tmp_path, stage="kto", dataset="kto_en_demo", max_samples=16, max_steps=12, logging_steps=4)
    logs = train_logs(tmp_path / "out")
    losses = [h["loss"] for h in logs]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"], logs
    for record in logs:
        assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl"} <= set(record)
        assert record["kl"] >= 0
    assert ctx.extras["trainer"].reference.kind == "adapter-disabled"


def test_kto_batches_with_one_kind_of_row_train_without_nan(tiny_model, tmp_path):
    rows = json.loads((DEMO_DATA / "kto_en_demo.json").read_text())
    good = [r for r in rows if r["label"]][:8]
    (tmp_path / "good.json").write_text(json.dumps(good))
    info = json.loads((DEMO_DATA / "dataset_info.json").read_text())["kto_en_demo"]
    (tmp_path / "dataset_info.json").write_text(json.dumps({"good": {**info, "file_name": "good.json"}}))
    ctx = train(tiny_model, tmp_path, stage="kto", dataset="good", dataset_dir=str(tmp_path), max_steps=4, pref_ftx=0.5)
    logs = train_logs(tmp_path / "out")
    assert logs and all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in logs), logs
    assert all("rewards/rejected" not in h and math.isfinite(h["rewards/chosen"]) for h in logs)
    assert all(math.isfinite(h["sft_loss"]) for h in logs)
    # the same batch with every row undesirable: a finite loss with finite gradients
    trainer = ctx.extras["trainer"]
    batch = a_batch(trainer)
    batch["kto_tags"] = torch.zeros_like(batch["kto_tags"])
    ctx.model.train()
    ctx.model.zero_grad()
    loss, metrics = trainer.objective(trainer, ctx.model, batch)
    loss.backward()
    assert math.isfinite(loss.item()) and metrics["rewards/chosen"].numel() == 0
    assert all(torch.isfinite(p.grad).all() for p in ctx.model.parameters() if p.grad is not None)


# --- LLaMA-Factory's example configs --------------------------------------------------------------------------

LF_DPO_EXAMPLE = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: dpo
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pref_beta: 0.1
pref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]

### dataset
dataset: dpo_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: saves/llama3-8b/lora/dpo
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
"""

LF_KTO_EXAMPLE = (LF_DPO_EXAMPLE
                  .replace("stage: dpo", "stage: kto")
                  .replace("pref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]\n", "")
                  .replace("dataset: dpo_en_demo", "dataset: kto_en_demo")
                  .replace("saves/llama3-8b/lora/dpo", "saves/llama3-8b/lora/kto"))


def llamafactory_example(stage: str, tiny_model, tmp_path):
    """examples/train_lora/llama3_lora_{dpo,kto}.yaml with only the paths changed: the model, the output and
    dataset_dir. The anchor (LLaMA-Factory's own data) has dpo_en_demo but no kto_en_demo: kto reads data/."""
    text = LF_KTO_EXAMPLE if stage == "kto" else LF_DPO_EXAMPLE
    text = text.replace("meta-llama/Meta-Llama-3-8B-Instruct", str(tiny_model))
    text = text.replace(f"saves/llama3-8b/lora/{stage}", str(tmp_path / "out"))
    text += f"dataset_dir: {ANCHOR if stage == 'dpo' else DEMO_DATA}\n"
    path = tmp_path / f"llama3_lora_{stage}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_llamafactory_example_configs_run_with_paths_changed_and_a_step_cap(stage, tiny_model, tmp_path):
    """The examples as `llamafactory-cli train FILE key=value` would run them, capped on the command line (one
    optimizer step is 8 pairs of up to 2048 tokens in bf16: about 10 s on a CPU core)."""
    path = llamafactory_example(stage, tiny_model, tmp_path)
    result = run_cli("train", str(path), "max_steps=1", "max_samples=16", "logging_steps=1", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").exists() and (out / "training_loss.png").exists()
    logs = train_logs(out)
    assert len(logs) == 1 and "rewards/chosen" in logs[0]
    # Before the first update the policy is the reference (LoRA's B starts at 0), so every pair's margin and
    # every row's log-ratio is 0: dpo's loss is log 2, kto's 1 - sigmoid(0). Averaged over the 8 accumulated
    # micro-batches, not summed: the trainer divides the per-batch mean by gradient_accumulation_steps.
    assert logs[0]["loss"] == pytest.approx(math.log(2) if stage == "dpo" else 0.5, abs=1e-3)
    assert "reference model: the policy with its adapter disabled" in result.stdout


def _slow_selected(request) -> bool:
    marks = request.config.getoption("-m") or ""
    return os.environ.get("TUNEFORGE_SLOW_TESTS") == "1" or ("slow" in marks and "not slow" not in marks)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_llamafactory_example_configs_run_whole(stage, tiny_model, tmp_path, request):
    """The whole examples, 3 epochs: kto (60 rows, 24 steps) about 40 s, dpo (the anchor's 300 long pairs,
    114 steps) about 20 min on a CPU core; run with -m slow or TUNEFORGE_SLOW_TESTS=1."""
    if not _slow_selected(request):
        pytest.skip("minutes on a CPU: run with -m slow or TUNEFORGE_SLOW_TESTS=1")
    result = run_cli("train", str(llamafactory_example(stage, tiny_model, tmp_path)), env=ONE_THREAD, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] and round(state["epoch"]) == 3
    assert all(math.isfinite(h["loss"]) for h in train_logs(tmp_path / "out"))


# --- check ----------------------------------------------------------------------------------------------------


def test_check_rejects_label_smoothing_without_sigmoid_and_pissa_with_the_implicit_reference(tiny_model, tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text(f"model_name_or_path: {tiny_model}\nstage: dpo\ndataset: dpo_en_demo\ndataset_dir: {DEMO_DATA}\n"
                    "template: llama3\nfinetuning_type: lora\npissa_init: true\npref_loss: hinge\ndpo_label_smoothing: 0.1\n")
    result = run_cli("check", str(path), env=ONE_THREAD)
    assert result.returncode != 0
    assert "dpo_label_smoothing: 0.1 applies only to pref_loss: sigmoid" in result.stderr, result.stderr
    assert "pissa_init: PiSSA" in result.stderr and f"set ref_model: {tiny_model}" in result.stderr
    assert "Traceback" not in result.stderr
    # the fixes it names pass
    result = run_cli("check", str(path), "pref_loss=sigmoid", f"ref_model={tiny_model}", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overrides, needle", [
    ({"pref_beta": 0}, "pref_beta must be positive"),
    ({"pref_ftx": -1}, "pref_ftx must be 0 or more"),
    ({"dpo_label_smoothing": 0.7}, "dpo_label_smoothing must be between 0 and 0.5"),
    ({"predict_with_generate": True}, "predict_with_generate: only the sft stage"),
    ({"do_predict": True}, "do_predict: the dpo stage has no prediction step"),
    ({"pref_loss": "orpo", "ref_model": "some/model"}, "ref_model is set but pref_loss: orpo uses no reference model"),
    ({"ref_model_adapters": "some/adapter"}, "ref_model_adapters applies to ref_model, which is not set"),
    ({"finetuning_type": "pissa"}, "pissa_init: PiSSA"),
    ({"stage": "kto", "dataset": "kto_en_demo", "kto_rejected_weight": 0}, "kto_rejected_weight must be positive"),
    ({"stage": "kto", "dataset": "kto_en_demo", "pissa_init": True}, "pissa_init: PiSSA"),
    ({"pref_loss": "kto_pair"}, "'kto_pair' is not one of: sigmoid, hinge, ipo, orpo, simpo"),
])
def test_check_names_what_cannot_work(overrides, needle, tiny_model, tmp_path):
    with pytest.raises(ConfigError) as info:
        prepare(None, settings(tiny_model, tmp_path, **overrides), manager=PluginManager(autoload=False))
    assert needle in str(info.value)


def test_unset_shared_keys_take_this_stages_defaults(tiny_model, tmp_path):
    """grpo declares pref_beta too, with 0.0: an unset pref_beta is still 0.1 for dpo and kto."""
    from tuneforge.plugins.stages.kto import KTOObjective
    from tuneforge.plugins.stages.preference import DPOObjective

    manager = PluginManager(autoload=False)
    dpo = DPOObjective.from_config(prepare(None, settings(tiny_model, tmp_path), manager=manager).config)
    assert (dpo.beta, dpo.loss_type, dpo.ftx, dpo.simpo_gamma) == (0.1, "sigmoid", 0.0, 0.5)
    kto = KTOObjective.from_config(prepare(None, settings(tiny_model, tmp_path, stage="kto", dataset="kto_en_demo"),
                                           manager=manager).config)
    assert (kto.beta, kto.desirable_weight, kto.undesirable_weight) == (0.1, 1.0, 1.0)


def test_shared_keys_count_as_used_by_either_stage(tiny_model, tmp_path):
    prepared = prepare(None, settings(tiny_model, tmp_path, stage="kto", dataset="kto_en_demo", pref_beta=0.2,
                                      pref_ftx=0.1), manager=PluginManager(autoload=False))
    assert not [w for w in prepared.warnings if "pref_beta" in w or "pref_ftx" in w], prepared.warnings
    prepared = prepare(None, settings(tiny_model, tmp_path, stage="kto", dataset="kto_en_demo", pref_loss="hinge"),
                       manager=PluginManager(autoload=False))
    assert any("pref_loss" in w and "stage 'dpo'" in w for w in prepared.warnings), prepared.warnings


# --- QLoRA ----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(Requirement("bitsandbytes", "").missing(), reason="needs the quant extra: pip install 'tuneforge[quant]'")
def test_qlora_dpo_trains(tiny_model, tmp_path):
    import bitsandbytes as bnb

    ctx = train(tiny_model, tmp_path, quantization_bit=4, max_steps=4)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in ctx.model.modules())
    assert ctx.extras["trainer"].reference.kind == "adapter-disabled"
    logs = train_logs(tmp_path / "out")
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"] or logs[-1]["loss"] < logs[0]["loss"], logs
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
