"""The ppo stage on the tiny model, on CPU: the reward rises (rule-based reward, a reward model trained by rm),
no second model copy for a LoRA policy's reference, the api reward contract, every method it works with,
resume, and check-time rejections.

A random tiny model writes near-random tokens. The rule rewards replies containing the letter "y", which
about a third of its 8-token replies do at the start: PPO has to push that share up.
"""

from __future__ import annotations

import gc
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch
import yaml

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

from .conftest import run_cli

TEXT = "y"
TOPICS = ["cats", "dogs", "rain", "the sun", "tea", "books", "music", "trees"]
PROMPTS = [{"instruction": f"Say something about {t}.", "input": "", "output": f"{t.capitalize()} is nice."} for t in TOPICS] * 4


@pytest.fixture(autouse=True)
def one_thread():
    """The model is tiny: one thread is faster than two competing with other work on a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dataset_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "prompts.json").write_text(json.dumps(PROMPTS))
    (folder / "dataset_info.json").write_text(json.dumps({"prompts": {"file_name": "prompts.json"}}))
    return folder


def settings(tiny_model, dataset_dir, output_dir, **overrides) -> list[str]:
    base = dict(
        stage="ppo", model_name_or_path=str(tiny_model), template="llama3", dataset="prompts", dataset_dir=str(dataset_dir),
        output_dir=str(output_dir), cutoff_len=64, per_device_train_batch_size=16, max_steps=12, learning_rate=2e-3,
        logging_steps=1, report_to="none", disable_tqdm=True, overwrite_output_dir=True, disable_gradient_checkpointing=True,
        max_new_tokens=8, temperature=1.0, top_p=1.0, finetuning_type="lora", lora_rank=8, seed=0,
        reward_funcs="contains", reward_contains_text=TEXT,
    )
    base.update(overrides)
    return [f"{k}={v}" for k, v in base.items() if v is not None]


def train(tiny_model, dataset_dir, output_dir, **overrides):
    return run_training(prepare(None, settings(tiny_model, dataset_dir, output_dir, **overrides),
                                manager=PluginManager(autoload=False)))


def step_logs(output_dir) -> list[dict]:
    """One record per PPO step (logging_steps=1), from trainer_log.jsonl."""
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "reward" in record]


def rise(rewards: list[float]) -> float:
    """The mean reward of the last 4 steps minus that of the first 2 (the policy has barely moved then)."""
    return sum(rewards[-4:]) / 4 - sum(rewards[:2]) / 2


# --- the reward rises --------------------------------------------------------------------------------------------


def test_rule_based_reward_rises_and_the_run_saves_policy_and_logs(tiny_model, dataset_dir, tmp_path):
    out = tmp_path / "out"
    train(tiny_model, dataset_dir, out)
    logs = step_logs(out)
    rewards = [r["reward"] for r in logs]
    assert len(rewards) == 12 and rise(rewards) > 0.2, rewards
    assert [r["current_steps"] for r in logs] == list(range(1, 13))
    for key in ("loss", "policy_loss", "value_loss", "entropy", "kl", "kl_coef", "lr", "epoch", "grad_norm"):
        assert all(key in r for r in logs), key
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollouts come from the reference itself
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["reward"] for h in history if "reward" in h] == rewards
    for name in ("adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "all_results.json",
                 "train_results.json", "trainer_state.json", "run_manifest.json", "tokenizer_config.json"):
        assert (out / name).exists(), name
    assert "train_loss" in json.loads((out / "all_results.json").read_text())


def test_reward_from_a_model_trained_by_rm_rises(tiny_model, dataset_dir, tmp_path):
    """rm learns from replies the tiny model itself wrote (those containing the text preferred); ppo then raises
    that reward model's score. The rm is a LoRA adapter, loaded into the LoRA policy as a second adapter."""
    (dataset_dir / "pairs.json").write_text(json.dumps(preference_pairs(tiny_model, 96)))
    info = json.loads((dataset_dir / "dataset_info.json").read_text())
    info["pairs"] = {"file_name": "pairs.json", "ranking": True}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info))
    rm_out = tmp_path / "rm"
    rm_config = tmp_path / "rm.yaml"
    rm_config.write_text(yaml.safe_dump(dict(
        stage="rm", model_name_or_path=str(tiny_model), template="llama3", dataset="pairs", dataset_dir=str(dataset_dir),
        output_dir=str(rm_out), finetuning_type="lora", lora_rank=8, per_device_train_batch_size=16, num_train_epochs=3,
        learning_rate=5e-3, cutoff_len=64, report_to="none", disable_tqdm=True, overwrite_output_dir=True,
        disable_gradient_checkpointing=True, logging_steps=1,
    )))
    result = run_cli("train", str(rm_config), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (rm_out / "value_head.safetensors").exists() and (rm_out / "adapter_config.json").exists()

    out = tmp_path / "ppo"
    train(tiny_model, dataset_dir, out, reward_funcs=None, reward_contains_text=None, reward_model=str(rm_out),
          reward_model_type="lora")
    rewards = [r["reward"] for r in step_logs(out)]
    spread = max(rewards) - min(rewards)
    assert rise(rewards) > 0.3 * spread > 0, rewards
    # only the policy's own adapter is saved, not the reward adapter it carried
    assert not (out / "reward").exists() and (out / "adapter_model.safetensors").exists()


def preference_pairs(tiny_model, count: int) -> list[dict]:
    """Pairs of the tiny model's own sampled replies: one containing TEXT (chosen), one without (rejected)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    torch.manual_seed(0)
    pairs = []
    for row in PROMPTS:
        if len(pairs) >= count:
            break
        ids = tokenizer.apply_chat_template([{"role": "user", "content": row["instruction"]}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids.repeat(24, 1), do_sample=True, top_p=1.0, temperature=1.0, max_new_tokens=8,
                                 pad_token_id=tokenizer.pad_token_id)
        replies = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        with_text = [r for r in replies if TEXT in r and r.strip()]
        without = [r for r in replies if TEXT not in r and r.strip()]
        pairs += [{"instruction": row["instruction"], "input": "", "output": [c, r]} for c, r in zip(with_text, without)]
    return pairs[:count]


def test_a_full_reward_model_folder_scores_with_its_value_head(tiny_model, dataset_dir, tmp_path):
    """reward_model_type full: a model folder plus value_head.safetensors (what rm writes for full tuning). A head
    with zero weights and bias 3 scores every reply 3.0, so the logged reward is exactly 3.0."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "rm_full"
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    lm.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    save_file({"v_head.summary.weight": torch.zeros(1, lm.config.hidden_size), "v_head.summary.bias": torch.tensor([3.0])},
              str(folder / "value_head.safetensors"))
    out = tmp_path / "out"
    ctx = train(tiny_model, dataset_dir, out, max_steps=2, per_device_train_batch_size=4, finetuning_type="freeze",
                reward_funcs=None, reward_contains_text=None, reward_model=str(folder), reward_model_type="full")
    assert [r["reward"] for r in step_logs(out)] == [3.0, 3.0]
    assert type(ctx.extras["trainer"].reference).__name__ == "FrozenReference"

    # reward_model_adapters: the base model plus an adapter folder that holds the head (bias -2 this time)
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "rm_adapter"
    get_peft_model(lm, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(adapter)
    save_file({"v_head.summary.weight": torch.zeros(1, lm.config.hidden_size), "v_head.summary.bias": torch.tensor([-2.0])},
              str(adapter / "value_head.safetensors"))
    train(tiny_model, dataset_dir, out, max_steps=1, per_device_train_batch_size=4, finetuning_type="freeze",
          reward_funcs=None, reward_contains_text=None, reward_model=str(tiny_model), reward_model_adapters=str(adapter),
          reward_model_type="full")
    assert [r["reward"] for r in step_logs(out)] == [-2.0]


# --- the reference -----------------------------------------------------------------------------------------------


def alive_parameters() -> int:
    gc.collect()
    return sum(o.numel() for o in gc.get_objects() if type(o) is torch.nn.Parameter)


def test_a_lora_policy_holds_no_second_model_for_its_reference(tiny_model, dataset_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    before = alive_parameters()
    ctx = train(tiny_model, dataset_dir, tmp_path / "out", max_steps=1)
    policy = ctx.extras["policy"]
    adapter = sum(p.numel() for n, p in ctx.model.named_parameters() if "lora_" in n)
    head = sum(p.numel() for p in policy.v_head.parameters())
    assert adapter > 0 and head == ctx.model.config.hidden_size + 1
    assert alive_parameters() - before == base + adapter + head
    assert type(ctx.extras["trainer"].reference).__name__ == "AdapterDisabledReference"


# --- every method ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, needs", [
    ({"finetuning_type": "freeze"}, None),
    ({"finetuning_type": "full"}, None),
    ({"finetuning_type": "dora"}, None),
    ({"finetuning_type": "lora", "quantization_bit": 4}, "bitsandbytes"),
    ({"finetuning_type": "full", "use_galore": True, "galore_target": "all", "galore_rank": 8}, "galore_torch"),
    ({"finetuning_type": "full", "use_apollo": True, "apollo_target": "all", "apollo_rank": 8}, "apollo_torch"),
], ids=["freeze", "full", "dora", "qlora", "galore", "apollo"])
def test_each_method_runs_a_step_and_saves_policy_and_value_head(tiny_model, dataset_dir, tmp_path, method, needs):
    if needs:
        pytest.importorskip(needs)
    out = tmp_path / "out"
    ctx = train(tiny_model, dataset_dir, out, max_steps=1, per_device_train_batch_size=4, **method)
    trainer = ctx.extras["trainer"]
    lora = method["finetuning_type"] in ("lora", "dora")
    assert type(trainer.reference).__name__ == ("AdapterDisabledReference" if lora else "FrozenReference")
    assert (out / ("adapter_model.safetensors" if lora else "model.safetensors")).exists()
    assert (out / "value_head.safetensors").exists()
    assert len(step_logs(out)) == 1
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in ctx.extras["policy"].v_head.parameters()} <= optimized  # the critic's head trains too


# --- the api reward ----------------------------------------------------------------------------------------------


class ScoringServer:
    """A local reward server: 1.0 for each completion containing TEXT; it keeps every request it got."""

    def __init__(self):
        requests = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append(body)
                answer = json.dumps({"scores": [1.0 if TEXT in c else 0.0 for c in body["completions"]]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/score"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_api_reward_posts_the_texts_and_uses_the_scores(tiny_model, dataset_dir, tmp_path):
    out = tmp_path / "out"
    with ScoringServer() as server:
        train(tiny_model, dataset_dir, out, max_steps=2, per_device_train_batch_size=4, reward_funcs=None,
              reward_contains_text=None, reward_model=server.url, reward_model_type="api")
    assert len(server.requests) == 2
    for body in server.requests:
        assert set(body) == {"model", "messages", "prompts", "completions"} and len(body["messages"]) == 4
        for message, prompt, completion in zip(body["messages"], body["prompts"], body["completions"]):
            assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nSay something about ")
            assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
            assert message.startswith(prompt) and completion in message
    logged = [r["reward"] for r in step_logs(out)]
    served = [sum(1.0 if TEXT in c else 0.0 for c in body["completions"]) / 4 for body in server.requests]
    assert logged == pytest.approx(served)


def test_api_reward_server_errors_are_reported_with_the_url(tiny_model, dataset_dir, tmp_path):
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match=r"reward_model \(api\) http://127.0.0.1:9/score: no scores"):
        train(tiny_model, dataset_dir, tmp_path / "out", max_steps=1, per_device_train_batch_size=2, reward_funcs=None,
              reward_contains_text=None, reward_model="http://127.0.0.1:9/score", reward_model_type="api")


# --- resume ------------------------------------------------------------------------------------------------------


def test_an_interrupted_run_resumes_to_the_same_policy(tiny_model, dataset_dir, tmp_path, capsys):
    """4 steps at once, and 2 steps + a resume to 4, give the same adapter, value head and rewards (constant LR,
    so the schedule does not depend on max_steps)."""
    from safetensors.torch import load_file

    common = dict(per_device_train_batch_size=4, lr_scheduler_type="constant", save_steps=2, ppo_score_norm=True)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_model, dataset_dir, straight, max_steps=4, **common)
    train(tiny_model, dataset_dir, resumed, max_steps=2, **common)
    assert (resumed / "checkpoint-2" / "ppo_state.json").exists()
    capsys.readouterr()
    ctx = train(tiny_model, dataset_dir, resumed, max_steps=4, overwrite_output_dir=False, **common)
    assert f"resuming from {resumed / 'checkpoint-2'}" in capsys.readouterr().out
    assert ctx.extras["trainer"].state.global_step == 4
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["reward"] for r in step_logs(straight)] == [r["reward"] for r in step_logs(resumed)]


def test_ctrl_c_finishes_the_step_and_saves_a_resumable_checkpoint(tiny_model, dataset_dir, tmp_path):
    import signal

    from transformers import TrainerCallback

    from tuneforge import hookimpl

    class PressCtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                signal.raise_signal(signal.SIGINT)

    class Plugin:
        @hookimpl
        def tuneforge_trainer_created(self, ctx, trainer):
            trainer.add_callback(PressCtrlC())

    out = tmp_path / "out"
    manager = PluginManager(autoload=False, extra_plugins=[("ctrl-c", Plugin())])
    with pytest.raises(KeyboardInterrupt):
        run_training(prepare(None, settings(tiny_model, dataset_dir, out, max_steps=4, per_device_train_batch_size=4),
                             manager=manager))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    for name in ("ppo_state.json", "trainer_state.json", "value_head.safetensors", "adapter_model.safetensors",
                 "optimizer.pt", "rng_state.pth"):
        assert (out / "checkpoint-2" / name).exists(), name


# --- check ----------------------------------------------------------------------------------------------------------


def problems(tiny_model, dataset_dir, tmp_path, **overrides) -> str:
    with pytest.raises(ConfigError) as info:
        prepare(None, settings(tiny_model, dataset_dir, tmp_path / "out", **overrides), manager=PluginManager(autoload=False))
    return str(info.value)


@pytest.mark.parametrize("overrides, expected", [
    ({"reward_funcs": None, "reward_contains_text": None}, "ppo needs a reward: set reward_model"),
    ({"reward_model": "saves/rm", "finetuning_type": "full"},
     "reward_model_type: lora loads the reward adapter into the policy's LoRA model, but the policy is trained with full"),
    ({"reward_model": "saves/rm", "reward_model_type": "api"}, "reward_model_type: api needs reward_model to be the server's URL"),
    ({"reward_model": "http://localhost:8000", "reward_model_type": "full"}, "is a URL: set reward_model_type: api"),
    ({"reward_model": "saves/rm", "reward_model_adapters": "saves/a"}, "reward_model_adapters applies to reward_model_type: full only"),
    ({"do_eval": True}, "ppo does not evaluate"),
    ({"val_size": 0.1}, "ppo does not evaluate"),
    ({"eval_strategy": "steps"}, "ppo does not evaluate"),
    ({"load_best_model_at_end": True}, "load_best_model_at_end needs evaluation"),
    ({"predict_with_generate": True}, "only sft predicts"),
    ({"finetuning_type": "pissa"}, "pissa_init: PiSSA moves the principal weights into the adapter"),
    ({"pissa_init": True}, "pissa_init: PiSSA moves the principal weights into the adapter"),
    ({"finetuning_type": "full", "use_badam": True}, "BAdam picks the parameters it trains among the model's own and never trains the value head ppo adds"),
    ({"packing": True}, "packing: ppo generates from one prompt per row"),
    ({"num_beams": 4}, "ppo samples one reply per prompt"),
    ({"do_sample": False}, "do_sample: false: ppo learns from replies sampled from the policy"),
    ({"ppo_epochs": 0}, "ppo_epochs must be at least 1, not 0"),
    ({"ppo_lam": 1.5}, "ppo_lam must be within [0, 1], not 1.5"),
    ({"reward_model_type": "remote"}, "reward_model_type"),
    ({"reward_funcs": "no_such_reward"}, "no_such_reward"),
])
def test_check_rejects_what_ppo_cannot_run(tiny_model, dataset_dir, tmp_path, overrides, expected):
    assert expected in problems(tiny_model, dataset_dir, tmp_path, **overrides)


def test_check_accepts_every_reward_source(tiny_model, dataset_dir, tmp_path):
    for overrides in ({}, {"reward_funcs": None, "reward_contains_text": None, "reward_model": "saves/rm"},
                      {"reward_funcs": None, "reward_contains_text": None, "reward_model": "saves/rm",
                       "reward_model_type": "full", "finetuning_type": "full"},
                      {"reward_funcs": None, "reward_contains_text": None, "reward_model": "http://localhost:8000/score",
                       "reward_model_type": "api", "finetuning_type": "freeze"}):
        prepare(None, settings(tiny_model, dataset_dir, tmp_path / "out", **overrides), manager=PluginManager(autoload=False))
