"""The grpo stage: trl's GRPOTrainer over the pipeline's prompts, scored by reward-function plugins.

- check-time rejections, each with its reason and fix;
- a short in-process LoRA run with a recording reward function: what trl generates from (the
  pipeline's ids, one BOS), what reward functions receive, the method's optimizer, the outputs;
- a run with the pip-installed third-party reward function (tests/plugin_packages/tuneforge-rewardfn)
  through the CLI: the mean reward in trainer_log.jsonl rises.
"""

from __future__ import annotations

import json
import types

import pytest

from tuneforge import RewardFunctionSpec, hookimpl
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .test_third_party_plugins import cli

PROMPTS = [
    {"instruction": "Count to three.", "input": "", "output": "1 2 3"},
    {"instruction": "Name a prime number.", "input": "", "output": "7"},
    {"instruction": "How many legs has a cat?", "input": "", "output": "4"},
    {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
]


def write_config(tmp_path, **values):
    """A grpo config over the PROMPTS dataset (dataset_info.json + data file in tmp_path)."""
    (tmp_path / "prompts.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"prompts": {"file_name": "prompts.json"}}))
    base = {"model_name_or_path": "some/model", "stage": "grpo", "template": "llama3", "dataset": "prompts",
            "dataset_dir": str(tmp_path), "output_dir": str(tmp_path / "out"), "reward_funcs": "think_format",
            "num_generations": 4, "per_device_train_batch_size": 4}
    base.update(values)
    path = tmp_path / "grpo.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in base.items()))
    return path


def problems(tmp_path, manager, **values) -> str:
    with pytest.raises(ConfigError) as info:
        prepare(write_config(tmp_path, **values), manager=manager)
    return str(info.value)


# --- check ---------------------------------------------------------------------------------------------


def test_a_valid_config_plans_the_stage_and_its_rewards(tmp_path, manager):
    prepared = prepare(write_config(tmp_path, reward_funcs="think_format,accuracy", reward_weights="1,0.5"), manager=manager)
    assert prepared.plan.stage.name == "grpo" and prepared.plan.stage.spec.data_kind == "prompt"
    assert [r.name for r in prepared.plan.rewards] == ["think_format", "accuracy"]
    assert not prepared.warnings


def test_grpo_without_reward_funcs_is_rejected(tmp_path, manager):
    message = problems(tmp_path, manager, reward_funcs=None)
    assert "stage grpo: reward_funcs is not set: grpo scores every completion with reward functions" in message
    assert "`tuneforge plugins --kind reward` lists them" in message


def test_group_size_and_batch_rules(tmp_path, manager):
    message = problems(tmp_path, manager, num_generations=1)
    assert "num_generations must be at least 2, not 1" in message

    message = problems(tmp_path, manager, num_generations=4, per_device_train_batch_size=3, gradient_accumulation_steps=2)
    assert ("the generation batch (per_device_train_batch_size 3 x gradient_accumulation_steps 2 x 1 process(es) = 6 "
            "completions) must hold whole groups of num_generations = 4") in message
    assert "per_device_train_batch_size: 4" in message  # the smallest that fits

    message = problems(tmp_path, manager, val_size=2, per_device_eval_batch_size=6)
    assert "the eval batch (per_device_eval_batch_size 6 x 1 process(es)) is 6: make per_device_eval_batch_size a multiple of 4" in message
    prepare(write_config(tmp_path, val_size=2, per_device_eval_batch_size=8), manager=manager)


def test_settings_that_cannot_work_are_rejected(tmp_path, manager):
    message = problems(tmp_path, manager, predict_with_generate=True, do_predict=True, do_sample=False, temperature=0,
                       reward_funcs="think_format,accuracy", reward_weights="1", streaming=True, max_steps=4)
    assert "grpo does not write predictions: remove do_predict/predict_with_generate" in message
    assert "do_sample: false makes every completion of a group the same" in message
    assert "temperature must be above 0 for sampling, not 0" in message
    assert "reward_weights has 1 value(s) but reward_funcs names 2 function(s)" in message
    assert "streaming: grpo samples each prompt num_generations times" in message
    message = problems(tmp_path, manager, reward_weights="1,heavy", reward_funcs="think_format,accuracy")
    assert "reward_weights must be numbers, not heavy" in message
    message = problems(tmp_path, manager, pref_beta=-0.1, num_iterations=0)
    assert "pref_beta (the KL coefficient) must be 0 or more, not -0.1" in message
    assert "num_iterations must be at least 1, not 0" in message
    message = problems(tmp_path, manager, grpo_loss_type="ppo")
    assert "grpo_loss_type: 'ppo' is not one of: dapo, grpo, dr_grpo, bnpo, cispo, sapo" in message


# --- a run, in process -----------------------------------------------------------------------------------


def recording_reward_plugin(calls: list):
    """An in-process plugin whose reward function records what it receives and rewards the letter e."""
    module = types.ModuleType("recording_reward")

    def score(ctx, prompts, completions, **columns):
        calls.append({"prompts": list(prompts), "completions": list(completions), "columns": dict(columns)})
        return [c.count("e") / max(len(c), 1) for c in completions]

    @hookimpl
    def tuneforge_reward_functions():
        return [RewardFunctionSpec(name="letter_e", description="share of e", score=score)]

    module.tuneforge_reward_functions = tuneforge_reward_functions
    return module


def test_lora_run_generates_from_the_pipeline_prompts(tiny_model, tmp_path):
    from peft import PeftModel

    from tuneforge.data.dataset import build_datasets
    from tuneforge.train.pipeline import run_training

    calls: list = []
    manager = PluginManager(autoload=False, extra_plugins=[("recording_reward", recording_reward_plugin(calls))])
    out = tmp_path / "out"
    cfg = write_config(tmp_path, model_name_or_path=str(tiny_model), finetuning_type="lora", reward_funcs="letter_e",
                       max_new_tokens=6, max_steps=2, logging_steps=1, learning_rate=1e-3, loraplus_lr_ratio=4,
                       pref_beta=0.01, temperature=1.0, top_p=1.0, disable_gradient_checkpointing=True,
                       save_strategy="no", report_to="none", output_dir=str(out), cutoff_len=128)
    ctx = run_training(prepare(cfg, manager=manager))
    trainer = ctx.extras["trainer"]
    # The method's optimizer, not trl's default: LoRA+ gives lora_B 4 x the learning rate of lora_A.
    rates = {group["initial_lr"] for group in trainer.optimizer.param_groups if group["params"]}
    assert {round(rate, 9) for rate in rates} >= {1e-3, 4e-3}

    # trl generates from the pipeline's token ids: the template's rendering with exactly one BOS.
    pipeline = build_datasets(ctx, "prompt").train
    text = trainer.train_dataset["prompt"][0]
    [ids], _, _ = trainer._tokenize_prompts([text])
    assert ids in [list(row) for row in pipeline["input_ids"]]
    assert ids.count(ctx.tokenizer.bos_token_id) == 1 and text.count(ctx.tokenizer.bos_token) == 1
    assert set(ctx.template.stop_token_ids(ctx.tokenizer)) <= set(trainer.eos_token_ids)

    # The model the method wrapped is trained as it is: trl adds no second adapter wrapper.
    assert isinstance(trainer.model, PeftModel) and not isinstance(trainer.model.base_model.model, PeftModel)

    # Reward functions receive the rendered prompt, the completion text and the dataset's reply.
    assert calls and len(calls[0]["completions"]) == 4  # one group: 4 completions of one prompt
    prompts, columns = calls[0]["prompts"], calls[0]["columns"]
    assert len(set(prompts)) == 1 and prompts[0] in trainer.train_dataset["prompt"]
    [row] = [r for r in PROMPTS if r["instruction"] in prompts[0]]
    assert columns == {"reference": [row["output"]] * 4}

    # trl's metrics name the plugin; the adapter is saved; the KL term ran (pref_beta > 0).
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 and all("rewards/letter_e/mean" in h and "kl" in h for h in steps)
    assert (out / "adapter_model.safetensors").is_file() and (out / "trainer_log.jsonl").is_file()


# --- a run with a pip-installed reward-function plugin ------------------------------------------------


def test_reward_of_a_third_party_reward_function_rises(rewardfn_site, tiny_model, tmp_path):
    # char_share (digits) is learnable from a random model: a few of the tokens it samples already hold
    # digits, so the completions of each group score differently from the first step on. Full tuning at
    # a high learning rate takes the mean from about 0.1 to above 0.5 within ten steps.
    out = tmp_path / "out"
    cfg = write_config(tmp_path, model_name_or_path=str(tiny_model), finetuning_type="full", reward_funcs="char_share",
                       num_generations=8, per_device_train_batch_size=8, max_new_tokens=8, max_steps=10,
                       logging_steps=1, learning_rate=5e-3, temperature=1.0, top_p=1.0,
                       disable_gradient_checkpointing=True, save_strategy="no", report_to="none",
                       output_dir=str(out), cutoff_len=128)
    result = cli("train", str(cfg), plugins=[rewardfn_site], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "reward     char_share  [tuneforge-rewardfn 0.2.0 (entry point 'rewardfn')]" in result.stdout

    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    rewards = [r["rewards/char_share/mean"] for r in records if "rewards/char_share/mean" in r]
    assert len(rewards) == 10, records
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.2 and last > 2 * first, rewards
