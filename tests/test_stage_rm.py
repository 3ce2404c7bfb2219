"""The rm stage on the tiny models: a value head learns a preference, is saved beside the LM as its
method saves it, resumes, and reloads (as ppo loads it) to the same scores.

The preference set is one a model cannot guess: each prompt asks for "yes" or "no", the chosen reply
says the requested word and the rejected one the other. A reply's score must depend on the prompt, so
a random head is right on about half of the (balanced) eval pairs, and a trained one on all of them.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

from .conftest import run_cli

TRAIN_IDS = range(64)
EVAL_IDS = range(100, 124)  # 24 held-out pairs, half asking for each word


def preference_rows(ids) -> list[dict]:
    rows = []
    for i in ids:
        wanted, other = ("yes", "no") if i % 2 == 0 else ("no", "yes")
        repeat = 1 + i % 3
        rows.append({"prompt": f"Request {i}: reply with the word {wanted}.",
                     "chosen": " ".join([wanted] * repeat), "rejected": " ".join([other] * repeat)})
    return rows


def alpaca(rows):
    return [{"instruction": r["prompt"], "input": "", "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]


def sharegpt(rows):
    return [{"conversations": [{"from": "human", "value": r["prompt"]}],
             "chosen": {"from": "gpt", "value": r["chosen"]}, "rejected": {"from": "gpt", "value": r["rejected"]}}
            for r in rows]


@pytest.fixture(scope="module")
def prefs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    (root / "train.json").write_text(json.dumps(alpaca(preference_rows(TRAIN_IDS))))
    (root / "eval.json").write_text(json.dumps(alpaca(preference_rows(EVAL_IDS))))
    (root / "all_sharegpt.json").write_text(json.dumps(sharegpt(preference_rows([*TRAIN_IDS, *EVAL_IDS]))))
    alpaca_columns = {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}
    (root / "dataset_info.json").write_text(json.dumps({
        "prefs": {"file_name": "train.json", "ranking": True, "columns": alpaca_columns},
        "prefs_eval": {"file_name": "eval.json", "ranking": True, "columns": alpaca_columns},
        "prefs_sharegpt": {"file_name": "all_sharegpt.json", "ranking": True, "formatting": "sharegpt",
                           "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    }))
    return root


@pytest.fixture(scope="module")
def tiny_qwen2():
    """Tied input and output embeddings: its saved full weights leave the LM head out."""
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2", "tiny")


def train_rm(model, prefs_dir, out, **overrides):
    config = dict(
        model_name_or_path=str(model), template="llama3", stage="rm", dataset="prefs", eval_dataset="prefs_eval",
        dataset_dir=str(prefs_dir), output_dir=str(out), cutoff_len=64, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, max_steps=30, learning_rate=1e-3, logging_steps=5, report_to="none",
        disable_tqdm=True, overwrite_output_dir=True,
    )
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}
    return run_training(prepare(None, [f"{k}={v}" for k, v in config.items()], manager=PluginManager(autoload=False)))


def eval_records(out) -> list[dict]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [r for r in history if "eval_accuracy" in r]


def batch_of(ctx, texts: list[str], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered chats, padded with the pad id on the right (as training pads) or the left."""
    rows = [ctx.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    pad = ctx.tokenizer.pad_token_id
    ids = [([pad] * (width - len(r)) + r) if left else (r + [pad] * (width - len(r))) for r in rows]
    mask = [([0] * (width - len(r)) + [1] * len(r)) if left else ([1] * len(r) + [0] * (width - len(r))) for r in rows]
    return torch.tensor(ids), torch.tensor(mask)


CHATS = [
    ("Request 7: reply with the word no.", "no no"),
    ("Request 7: reply with the word no.", "yes yes"),
    ("Request 200: reply with the word yes.", "yes"),
]


def chat_texts(ctx) -> list[str]:
    return [ctx.tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                              tokenize=False) for q, a in CHATS]


def scores(model, ctx, left: bool = False) -> torch.Tensor:
    from tuneforge.plugins.stages.reward_model import score

    model.eval()
    with torch.no_grad():
        return score(model, *batch_of(ctx, chat_texts(ctx), left=left))


def optimized(trainer) -> set[int]:
    return {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}


def test_lora_rm_learns_the_preference_and_saves_adapter_and_head(tiny_model, prefs_dir, tmp_path):
    out = tmp_path / "out"
    ctx = train_rm(tiny_model, prefs_dir, out, finetuning_type="lora", lora_rank=8, eval_strategy="steps",
                   eval_steps=10, eval_on_start=True, save_steps=10, max_steps=20, do_predict=True,
                   gradient_checkpointing=True)  # chosen by the planner otherwise (off for the tiny model)
    evals = eval_records(out)
    assert evals[0]["step"] == 0 and 0.25 <= evals[0]["eval_accuracy"] <= 0.75, evals[0]  # the random head
    assert evals[-1]["step"] == 20 and evals[-1]["eval_accuracy"] >= 0.9, evals[-1]
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.9 and results["eval_loss"] < evals[0]["eval_loss"]
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "trainer_log.jsonl",
                 "train_results.json", "tokenizer_config.json", "checkpoint-10/value_head.safetensors",
                 "checkpoint-10/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()  # LoRA saves the adapter, not the base weights
    assert any("loss" in json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines())

    # what trained: the adapter and the head, under activation checkpointing, with the loss scaled per pair
    reward_model, trainer = ctx.extras["reward_model"], ctx.extras["trainer"]
    trainable = {n for n, p in reward_model.named_parameters() if p.requires_grad}
    assert {"v_head.summary.weight", "v_head.summary.bias"} <= trainable
    assert all("lora_" in n or n.startswith("v_head.") for n in trainable)
    assert {id(p) for p in reward_model.v_head.parameters()} <= optimized(trainer)
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["trainable_parameters"] == sum(p.numel() for p in reward_model.parameters() if p.requires_grad)
    assert trainer.args.activation_checkpointing and reward_model.pretrained_model.is_activation_checkpointing
    assert trainer.model_accepts_loss_kwargs is False
    saved_head = load_file(str(out / "value_head.safetensors"))
    assert torch.equal(saved_head["v_head.summary.weight"], reward_model.v_head.summary.weight.detach())

    # do_predict: each eval pair's two scores, in order, and the predict metrics
    lines = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(lines) == len(EVAL_IDS) and set(lines[0]) == {"chosen", "rejected"}
    assert sum(line["chosen"] > line["rejected"] for line in lines) >= 0.9 * len(lines)
    assert json.loads((out / "predict_results.json").read_text())["predict_accuracy"] >= 0.9

    # ppo's reward_model_type lora: the adapter folder onto its base model gives the same scores
    from tuneforge.plugins.stages.reward_model import load_reward_model

    reloaded = load_reward_model(ctx, out, "lora")
    assert not reloaded.training and not any(p.requires_grad for p in reloaded.parameters())
    trained_scores = scores(reward_model, ctx)
    assert torch.equal(scores(reloaded, ctx), trained_scores)
    assert trained_scores[0] > trained_scores[1]  # "no no" is what request 7 asked for

    # a run that starts from the trained adapter starts from its head too: evaluated alone, it is as accurate
    train_rm(tiny_model, prefs_dir, tmp_path / "again", finetuning_type="lora", adapter_name_or_path=str(out),
             do_train=False)
    assert json.loads((tmp_path / "again" / "eval_results.json").read_text())["eval_accuracy"] >= 0.9


def test_full_rm_learns_and_reloads_as_a_full_model(tiny_model, prefs_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.errors import TuneforgeError
    from tuneforge.plugins.stages._value_head import CausalLMWithValueHead, read_value_head
    from tuneforge.plugins.stages.reward_model import load_reward_model

    out = tmp_path / "out"
    ctx = train_rm(tiny_model, prefs_dir, out, finetuning_type="full", eval_strategy="steps", eval_steps=30,
                   eval_on_start=True)
    evals = eval_records(out)
    assert 0.25 <= evals[0]["eval_accuracy"] <= 0.75 and evals[-1]["eval_accuracy"] >= 0.9, evals
    assert json.loads((out / "all_results.json").read_text())["eval_accuracy"] >= 0.9
    for name in ("config.json", "model.safetensors", "value_head.safetensors", "trainer_log.jsonl"):
        assert (out / name).is_file(), name

    trained = ctx.extras["reward_model"]
    expected = scores(trained, ctx)
    # ppo's reward_model_type full, through tuneforge's loader ...
    assert torch.equal(scores(load_reward_model(ctx, out, "full"), ctx), expected)
    # ... and with transformers alone: the folder is an ordinary model plus value_head.safetensors
    plain = CausalLMWithValueHead(AutoModelForCausalLM.from_pretrained(out))
    plain.v_head.load_state_dict(read_value_head(out))
    assert torch.equal(scores(plain, ctx), expected)
    # a row scores the same whichever side it is padded on (ppo scores left-padded prompts + replies)
    assert torch.allclose(scores(trained, ctx, left=True), expected, atol=1e-5)
    # a run that starts from the trained model starts from its head too: evaluated alone, it is as accurate
    train_rm(out, prefs_dir, tmp_path / "again", finetuning_type="full", do_train=False)
    assert json.loads((tmp_path / "again" / "eval_results.json").read_text())["eval_accuracy"] >= 0.9
    with pytest.raises(TuneforgeError, match="holds no LoRA adapter"):
        load_reward_model(ctx, out, "lora")
    with pytest.raises(TuneforgeError, match="has no value_head.safetensors"):
        load_reward_model(ctx, tiny_model, "full")


def test_freeze_rm_trains_the_unfrozen_layers_and_the_head(tiny_model, prefs_dir, tmp_path):
    out = tmp_path / "out"
    ctx = train_rm(tiny_model, prefs_dir, out, finetuning_type="freeze", freeze_trainable_layers=1, max_steps=4,
                   save_steps=2, eval_dataset=None)
    reward_model = ctx.extras["reward_model"]
    last = reward_model.config.num_hidden_layers - 1
    trainable = {n for n, p in reward_model.named_parameters() if p.requires_grad}
    assert trainable and all(f".layers.{last}." in n or n.startswith("v_head.") for n in trainable)
    assert {id(p) for p in reward_model.v_head.parameters()} <= optimized(ctx.extras["trainer"])
    # saved: full weights in which only the last layer moved, and a head that moved between checkpoints
    base, saved = load_file(str(tiny_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], base[k]) for k in base if f".layers.{last}." not in k)
    assert not all(torch.equal(saved[k], base[k]) for k in base if f".layers.{last}." in k)
    head_at_2 = load_file(str(out / "checkpoint-2" / "value_head.safetensors"))
    head_at_4 = load_file(str(out / "value_head.safetensors"))
    assert not torch.equal(head_at_2["v_head.summary.weight"], head_at_4["v_head.summary.weight"])
    assert torch.equal(head_at_4["v_head.summary.weight"], reward_model.v_head.summary.weight.detach())


@pytest.mark.parametrize("method, family", [("lora", "llama3"), ("full", "qwen2")])
def test_resume_restores_the_value_head(method, family, tiny_model, tiny_qwen2, prefs_dir, tmp_path):
    """A run resumed from checkpoint-3 ends with the head (and losses) of the run that was never stopped.

    A resume that left the head as initialised would train steps 4-6 from another head and end elsewhere.
    qwen2 ties its LM head to the embeddings, so its saved weights leave that key out."""
    model, template = (tiny_model, "llama3") if family == "llama3" else (tiny_qwen2, "qwen")
    out = tmp_path / "out"
    settings = dict(finetuning_type=method, template=template, max_steps=6, save_steps=3, logging_steps=1,
                    eval_dataset=None)
    train_rm(model, prefs_dir, out, **settings)

    def losses():
        lines = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
        return {r["current_steps"]: r["loss"] for r in lines if "loss" in r}

    uninterrupted_head, uninterrupted_losses = (out / "value_head.safetensors").read_bytes(), losses()
    assert (out / "checkpoint-3" / "value_head.safetensors").read_bytes() != uninterrupted_head
    shutil.rmtree(out / "checkpoint-6")
    (out / "value_head.safetensors").unlink()
    train_rm(model, prefs_dir, out, overwrite_output_dir=False, **settings)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert losses() == uninterrupted_losses
    assert (out / "value_head.safetensors").read_bytes() == uninterrupted_head


def test_load_best_model_at_end_keeps_the_best_checkpoints_head(tiny_model, prefs_dir, tmp_path):
    """With greater_is_better on the eval loss the "best" checkpoint is the worst one: never the last, so
    the final files can only equal it if the best checkpoint's LM and head were loaded back."""
    out = tmp_path / "out"
    train_rm(tiny_model, prefs_dir, out, finetuning_type="full", max_steps=6, eval_strategy="steps", eval_steps=2,
             save_steps=2, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True)
    state = json.loads((out / "trainer_state.json").read_text())
    worst = max(eval_records(out), key=lambda r: r["eval_loss"])["step"]
    assert worst != 6 and state["best_model_checkpoint"].endswith(f"checkpoint-{worst}")
    best = out / f"checkpoint-{worst}"
    assert (out / "value_head.safetensors").read_bytes() == (best / "value_head.safetensors").read_bytes()
    final, kept = load_file(str(out / "model.safetensors")), load_file(str(best / "model.safetensors"))
    assert final.keys() == kept.keys() and all(torch.equal(final[k], kept[k]) for k in final)


@pytest.mark.parametrize("with_lora", [False, True])
def test_a_gathered_state_dict_saves_as_the_live_model_does(with_lora, tiny_model, tmp_path):
    """FSDP and DeepSpeed hand save_pretrained the whole wrapper's state dict: the LM's part goes to the LM's
    files and the head's to value_head.safetensors, exactly as saving from the live modules writes them."""
    from transformers import AutoModelForCausalLM

    from tuneforge.plugins.stages._value_head import CausalLMWithValueHead

    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    if with_lora:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    reward_model = CausalLMWithValueHead(lm)
    reward_model.save_pretrained(tmp_path / "live")
    gathered = {k: v.clone() for k, v in reward_model.state_dict().items()}
    reward_model.save_pretrained(tmp_path / "gathered", state_dict=gathered)
    weights = "adapter_model.safetensors" if with_lora else "model.safetensors"
    for name in (weights, "value_head.safetensors"):
        live, saved = load_file(str(tmp_path / "live" / name)), load_file(str(tmp_path / "gathered" / name))
        assert live.keys() == saved.keys() and all(torch.equal(live[k], saved[k]) for k in live), name


def test_tuneforge_train_sharegpt_lora_rm_end_to_end(tiny_model, prefs_dir, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "rm.yaml"
    config.write_text("\n".join([
        "### model", f"model_name_or_path: {tiny_model}", "", "### method", "stage: rm", "do_train: true",
        "finetuning_type: lora", "lora_rank: 8", "lora_target: all", "", "### dataset", "dataset: prefs_sharegpt",
        f"dataset_dir: {prefs_dir}", "template: llama3", "cutoff_len: 64", "", "### output", f"output_dir: {out}",
        "logging_steps: 5", "plot_loss: true", "overwrite_output_dir: true", "report_to: none", "disable_tqdm: true",
        "", "### train", "per_device_train_batch_size: 8", "learning_rate: 1.0e-3", "max_steps: 20",
        "", "### eval", "val_size: 24", "per_device_eval_batch_size: 8", "eval_strategy: steps", "eval_steps: 20", "",
    ]))
    check = run_cli("check", str(config))
    assert check.returncode == 0 and "stage      rm" in check.stdout, check.stdout + check.stderr
    result = run_cli("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("adapter_model.safetensors", "adapter_config.json", "value_head.safetensors", "trainer_log.jsonl",
                 "all_results.json", "eval_results.json", "training_loss.png", "run_manifest.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.9 and "train_loss" in results
    assert "rm" in {row["name"] for row in json.loads((out / "run_manifest.json").read_text())["plan"]}


def test_tuneforge_check_rejects_what_rm_cannot_do(tiny_model, prefs_dir, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("\n".join([
        f"model_name_or_path: {tiny_model}", "stage: rm", "finetuning_type: full", "dataset: prefs",
        f"dataset_dir: {prefs_dir}", "template: llama3", "do_predict: true", "predict_with_generate: true",
        "packing: true", "use_badam: true", "",
    ]))
    result = run_cli("check", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err
    assert "stage rm: predict_with_generate: only sft generates replies" in err
    assert "stage rm: do_predict scores the evaluation pairs, but there are none: set val_size" in err
    assert "stage rm: BAdam picks the parameters it trains among the model's own and never trains the value head rm adds" in err
    assert "packing" in err and "not supported for pairwise data" in err
