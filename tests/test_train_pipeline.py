"""End to end on the tiny model: config -> plan -> load -> method -> data -> stage -> outputs."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from tuneforge.plan import prepare
from tuneforge.train.pipeline import run_training

from .conftest import ANCHOR, REPO, run_cli

ROWS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(6) for b in range(6)
]


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "sums.json").write_text(json.dumps(ROWS))
    (tmp_path / "text.jsonl").write_text("\n".join(json.dumps({"text": f"{r['instruction']} {r['output']}"}) for r in ROWS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "sums": {"file_name": "sums.json"},
        "text": {"file_name": "text.jsonl", "columns": {"prompt": "text"}},
    }))
    return tmp_path


def train(tiny_model, dataset_dir, tmp_path, manager, **overrides):
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", dataset="sums", dataset_dir=str(dataset_dir),
        output_dir=str(tmp_path / "out"), cutoff_len=64, per_device_train_batch_size=4, max_steps=12,
        learning_rate=5e-3, logging_steps=1, report_to="none", disable_tqdm=True, overwrite_output_dir=True,
    )
    base.update(overrides)
    prepared = prepare(None, [f"{k}={v}" for k, v in base.items()], manager=manager)
    return run_training(prepared)


def losses(output_dir):
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


def test_sft_lora_trains_saves_and_reloads_with_peft_alone(tiny_model, dataset_dir, tmp_path, manager):
    ctx = train(tiny_model, dataset_dir, tmp_path, manager, finetuning_type="lora", lora_rank=4, plot_loss=True, val_size=0.1)
    out = tmp_path / "out"
    curve = losses(out)
    assert len(curve) == 12 and sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve
    for name in ("adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl", "all_results.json",
                 "train_results.json", "eval_results.json", "training_args.yaml", "run_manifest.json", "training_loss.png",
                 "trainer_state.json", "tokenizer_config.json"):
        assert (out / name).exists(), name
    # the saved tokenizer carries the training template: inference renders exactly what training did
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}]
    rendered = saved.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == saved.decode(ctx.template.encode_prompt(saved, chat[1:], "Be brief."))
    results = json.loads((out / "all_results.json").read_text())
    assert "train_loss" in results and "eval_loss" in results
    # LoRA's trainable count follows from shapes: r * (in + out) for every linear layer but the head
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = ctx.model
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    linears = [m for m in base.modules() if isinstance(m, torch.nn.Linear) and m is not base.get_output_embeddings()]
    assert len([m for m in model.modules() if isinstance(m, LoraLayer)]) == len(linears)
    expected = sum(4 * (m.in_features + m.out_features) for m in linears)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    # the adapter alone, loaded with PEFT and transformers (no tuneforge), gives identical logits
    from peft import PeftModel

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out).eval()(input_ids=ids).logits
    assert torch.equal(trained, reloaded)


def test_freeze_trains_exactly_the_last_layer(tiny_model, dataset_dir, tmp_path, manager):
    ctx = train(tiny_model, dataset_dir, tmp_path, manager, finetuning_type="freeze", freeze_trainable_layers=1, max_steps=2)
    trainable = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
    last = ctx.model.config.num_hidden_layers - 1
    assert trainable and all(f".layers.{last}." in n for n in trainable)
    assert {n for n, _ in ctx.model.named_parameters() if f".layers.{last}." in n} == trainable


def test_pt_stage_full_tuning_loss_falls(tiny_model, dataset_dir, tmp_path, manager):
    train(tiny_model, dataset_dir, tmp_path, manager, stage="pt", dataset="text", finetuning_type="full", cutoff_len=32, learning_rate=1e-3)
    curve = losses(tmp_path / "out")
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_bad_rows_are_named_or_skipped(tiny_model, dataset_dir, tmp_path, manager):
    rows = ROWS[:5] + [{"instruction": "q", "input": "", "output": ""}, {"instruction": 3, "output": "x"}]
    (dataset_dir / "sums.json").write_text(json.dumps(rows))
    from tuneforge.errors import DataError

    with pytest.raises(DataError) as info:
        train(tiny_model, dataset_dir, tmp_path, manager, finetuning_type="full", max_steps=1)
    message = str(info.value)
    assert "2 bad row(s) of 7" in message
    assert "sums.json: row 6: output: empty response" in message
    assert "sums.json: row 7: instruction: must be a string, got int" in message
    train(tiny_model, dataset_dir, tmp_path, manager, finetuning_type="full", max_steps=1, skip_bad_rows=True)


def llamafactory_example(tiny_model, tmp_path):
    """examples/train_lora/llama3_lora_sft.yaml with only its paths changed: the model, the data folder, the output."""
    import yaml

    original = (REPO / "examples" / "train_lora" / "llama3_lora_sft.yaml").read_text()
    text = original.replace("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct", f"model_name_or_path: {tiny_model}")
    text = text.replace("output_dir: saves/llama3-8b/lora/sft", f"output_dir: {tmp_path / 'out'}")
    text += f"dataset_dir: {ANCHOR}\n"
    before, after = yaml.safe_load(original), yaml.safe_load(text)
    assert {k for k in after if after[k] != before.get(k)} == {"model_name_or_path", "output_dir", "dataset_dir"}
    path = tmp_path / "llama3_lora_sft.yaml"
    path.write_text(text)
    return path


def _slow_selected(request) -> bool:
    marks = request.config.getoption("-m") or ""
    return os.environ.get("TUNEFORGE_SLOW_TESTS") == "1" or ("slow" in marks and "not slow" not in marks)


@pytest.mark.slow
def test_llamafactory_example_config_trains_unchanged(tiny_model, tmp_path, request):
    """The whole example: 1000 samples of identity + alpaca_en_demo, 3 epochs, batch 1 x 8 (369 steps).

    Measured at about 15-20 minutes on 2 CPU cores, so it runs only when asked for:
    `pytest -m slow` or TUNEFORGE_SLOW_TESTS=1."""
    if not _slow_selected(request):
        pytest.skip("about 15-20 min on 2 CPU cores: run with -m slow or TUNEFORGE_SLOW_TESTS=1")
    result = run_cli("train", str(llamafactory_example(tiny_model, tmp_path)), cwd=REPO, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] and round(state["epoch"]) == 3
    curve = [json.loads(line)["loss"] for line in (out / "trainer_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3
    for name in ("adapter_model.safetensors", "training_loss.png", "eval_results.json", "train_results.json"):
        assert (out / name).exists(), name


def test_llamafactory_example_config_trains_with_paths_changed_and_a_step_cap(tiny_model, tmp_path):
    """The same file, run as `llamafactory-cli train FILE key=value` would: paths changed in the file, the amount of
    training capped on the command line so the suite stays fast. The progress bar shows the ETA."""
    result = run_cli(
        "train", str(llamafactory_example(tiny_model, tmp_path)), "max_steps=3", "max_samples=40", "logging_steps=1",
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert (tmp_path / "out" / "training_loss.png").exists()  # plot_loss: true in the example
    assert re.search(r"\d+/3 \[\d\d:\d\d<\d\d:\d\d", result.stderr), result.stderr[-2000:]  # tqdm: elapsed<remaining


def test_lifecycle_hooks_are_called_in_order(tiny_model, dataset_dir, tmp_path):
    import types

    from tuneforge import hookimpl
    from tuneforge.plugin_manager import PluginManager

    calls = []
    recorder = types.ModuleType("recorder")

    @hookimpl
    def tuneforge_model_ready(ctx, model, tokenizer):
        calls.append(("model_ready", sum(p.numel() for p in model.parameters() if p.requires_grad) > 0))

    @hookimpl
    def tuneforge_trainer_created(ctx, trainer):
        calls.append(("trainer_created", trainer.args.max_steps))

    @hookimpl
    def tuneforge_run_end(ctx, metrics):
        calls.append(("run_end", "train_loss" in metrics))

    recorder.tuneforge_model_ready = tuneforge_model_ready
    recorder.tuneforge_trainer_created = tuneforge_trainer_created
    recorder.tuneforge_run_end = tuneforge_run_end
    manager = PluginManager(autoload=False, extra_plugins=[("recorder", recorder)])
    train(tiny_model, dataset_dir, tmp_path, manager, finetuning_type="lora", max_steps=1)
    assert calls == [("model_ready", True), ("trainer_created", 1), ("run_end", True)]
