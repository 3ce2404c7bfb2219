"""Resume is exact: a `tuneforge train` killed with SIGKILL (or stopped with Ctrl-C) and started again
gives the same per-step losses as a run that was never interrupted, because weights, optimizer,
scheduler, RNG and data position all come back (docs/training.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

from .conftest import REPO, run_cli

ROWS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(6) for b in range(6)
]
STEPS = 12  # 36 rows in batches of 4: 9 steps per epoch, so the run crosses an epoch boundary


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory):
    """A LoRA sft config with dropout, so the RNG state matters, saving every 3 steps."""
    root = tmp_path_factory.mktemp("resume")
    (root / "sums.json").write_text(json.dumps(ROWS))
    (root / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    path = root / "lora.yaml"
    path.write_text("\n".join([
        f"model_name_or_path: {tiny_model}", "template: llama3", "dataset: sums", f"dataset_dir: {root}",
        "stage: sft", "finetuning_type: lora", "lora_rank: 4", "lora_dropout: 0.1", "cutoff_len: 64",
        "per_device_train_batch_size: 4", f"max_steps: {STEPS}", "learning_rate: 5.0e-3", "lr_scheduler_type: cosine",
        "warmup_ratio: 0.2", "logging_steps: 1", "save_steps: 3", "report_to: none", "disable_tqdm: true", "",
    ]))
    return path


def losses_by_step(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    steps = [r["current_steps"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {r["current_steps"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli("train", str(config), f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    curve = losses_by_step(out)
    assert sorted(curve) == list(range(1, STEPS + 1))
    return curve


def start(config, out, *overrides):
    """`tuneforge train` in the background, its output in files (a pipe could fill up and block it)."""
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"{out.name}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli.main", "train", str(config), f"output_dir={out}", *overrides],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy(),
    )
    process.log_path = out.parent / f"{out.name}.log"
    return process


def wait_for(condition, process, timeout: float = 300):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before the test could interrupt it:\n"
                        + process.log_path.read_text()[-3000:])
        if time.time() > deadline:
            process.kill()
            pytest.fail("timed out waiting for training to get there")
        time.sleep(0.005)


def assert_same_curve(out, reference):
    curve = losses_by_step(out)
    assert sorted(curve) == list(range(1, STEPS + 1)), sorted(curve)
    for step, loss in reference.items():
        assert abs(curve[step] - loss) <= 1e-6, f"step {step}: resumed {curve[step]} vs uninterrupted {loss}"


def test_sigkill_then_resume_gives_the_uninterrupted_losses(config, reference, tmp_path):
    out = tmp_path / "killed"
    process = start(config, out)
    wait_for(lambda: (out / "checkpoint-3" / "trainer_state.json").exists(), process)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "adapter_model.safetensors").exists(), "the run finished before it was killed"

    result = run_cli("train", str(config), f"output_dir={out}")  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out}/checkpoint-" in result.stdout
    assert_same_curve(out, reference)
    assert (out / "adapter_model.safetensors").exists() and (out / "train_results.json").exists()


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_exactly(config, reference, tmp_path):
    out = tmp_path / "interrupted"
    process = start(config, out, "save_steps=1000")  # any checkpoint must come from the Ctrl-C
    wait_for(lambda: len(_lines(out / "trainer_log.jsonl")) >= 2, process)
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(timeout=120) == 130
    log = process.log_path.read_text()
    assert "SIGINT: finishing this step and saving a checkpoint" in log
    (checkpoint,) = list(out.glob("checkpoint-*"))
    step = int(checkpoint.name.split("-")[1])
    assert 2 <= step < STEPS and f"stopped by SIGINT after step {step}; saved {checkpoint}" in log
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).exists(), name
    assert not (out / "adapter_model.safetensors").exists()

    result = run_cli("train", str(config), f"output_dir={out}", "save_steps=1000")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {checkpoint}" in result.stdout
    assert_same_curve(out, reference)


def _lines(path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if '"loss"' in line]
    except FileNotFoundError:
        return []


# --- in process: explicit resume_from_checkpoint, incomplete checkpoints, every optimizer method --------------------


def train(config, out, **overrides):
    args = [f"output_dir={out}", *(f"{k}={v}" for k, v in overrides.items())]
    return run_training(prepare(config, args, manager=PluginManager(autoload=False)))


@pytest.mark.parametrize("method", [
    dict(finetuning_type="full", learning_rate=1e-3, optim="adamw_torch_fused"),
    dict(finetuning_type="freeze", freeze_trainable_layers=1, gradient_accumulation_steps=2, per_device_train_batch_size=2),
    dict(finetuning_type="galore", galore_rank=4, galore_update_interval=3),
    dict(use_galore=True, finetuning_type="full", galore_layerwise=True, galore_rank=4, galore_update_interval=3),
    dict(finetuning_type="apollo", apollo_rank=4, apollo_update_interval=3),
    dict(use_apollo=True, finetuning_type="full", apollo_layerwise=True, apollo_proj="svd", apollo_rank=4),
    dict(use_badam=True, finetuning_type="full", badam_switch_interval=3, badam_switch_mode="random"),
    dict(finetuning_type="badam", badam_mode="ratio", badam_update_ratio=0.5),
], ids=["full", "freeze-accumulation", "galore", "galore-layerwise", "apollo", "apollo-layerwise-svd", "badam", "badam-ratio"])
def test_every_method_resumes_exactly_from_a_checkpoint(config, tmp_path, method):
    lib = {"galore": "galore_torch", "use_galore": "galore_torch", "apollo": "apollo_torch", "use_apollo": "apollo_torch",
           "badam": "badam", "use_badam": "badam"}
    for key in (method.get("finetuning_type"), *method):
        if key in lib:
            pytest.importorskip(lib[key], reason="needs the optim extra: pip install 'tuneforge[optim]'")
    settings = dict(method, save_steps=4, overwrite_output_dir=True)
    train(config, tmp_path / "a", **settings)
    train(config, tmp_path / "b", **settings, resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-4"))
    first, resumed = losses_by_step(tmp_path / "a"), losses_by_step(tmp_path / "b")
    assert sorted(resumed) == list(range(5, STEPS + 1))
    for step in resumed:
        assert abs(resumed[step] - first[step]) <= 1e-6, (step, resumed[step], first[step])


def test_incomplete_checkpoints_are_skipped_and_changes_are_reported(config, tmp_path, capsys):
    out = tmp_path / "out"
    train(config, out, max_steps=6)
    capsys.readouterr()
    (out / "checkpoint-9").mkdir()  # a save cut short by a kill: no trainer_state.json
    (out / "checkpoint-12").mkdir()
    (out / "checkpoint-12" / "trainer_state.json").write_text('{"global_step": 1')
    train(config, out, max_steps=8, lora_dropout=0.0)
    printed = capsys.readouterr().out
    assert f"skipping {out}/checkpoint-12: trainer_state.json is cut short" in printed
    assert f"skipping {out}/checkpoint-9: trainer_state.json is missing" in printed
    assert f"resuming from {out}/checkpoint-6" in printed
    assert "changed since the checkpoint was written: lora_dropout: 0.1 -> 0.0" in printed
    assert sorted(losses_by_step(out)) == list(range(1, 9))


def test_overwrite_output_dir_starts_afresh(config, tmp_path, capsys):
    out = tmp_path / "out"
    train(config, out, max_steps=3)
    train(config, out, max_steps=3, overwrite_output_dir=True)
    assert "resuming" not in capsys.readouterr().out
    assert sorted(losses_by_step(out)) == [1, 2, 3]


def test_resume_from_a_missing_or_broken_checkpoint_is_a_clear_error(config, tmp_path):
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match="is not a folder"):
        train(config, tmp_path / "out", resume_from_checkpoint=str(tmp_path / "nope"))
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(TuneforgeError, match="cannot resume from .*checkpoint-5: trainer_state.json is missing"):
        train(config, tmp_path / "out", resume_from_checkpoint=str(tmp_path / "checkpoint-5"))


# --- checkpoints written whole, damaged ones named and skipped -----------------------------------------------------

#: Runs `tuneforge train ARGS` with the Trainer's RNG-state save slowed at one step: after the weights,
#: optimizer, scheduler and RNG files are written and before trainer_state.json, it writes the folder it
#: saves into to MARKER and sleeps, so a test can kill -9 the run in the middle of that save.
SLOW_SAVE = """
import sys, time
from pathlib import Path
from transformers import Trainer

marker, step = Path(sys.argv[1]), int(sys.argv[2])
save_rng_state = Trainer._save_rng_state

def slow(self, output_dir):
    save_rng_state(self, output_dir)
    if self.state.global_step == step:
        marker.write_text(str(output_dir))
        time.sleep(600)

Trainer._save_rng_state = slow
from tuneforge.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def kill_during_the_save_at(config, out, step: int, tmp_path) -> Path:
    """Start training, kill -9 it in the middle of saving checkpoint-STEP; return the folder it was saving into."""
    script, marker = tmp_path / "slow_save.py", tmp_path / f"saving-{step}"
    script.write_text(SLOW_SAVE)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    process = subprocess.Popen([sys.executable, str(script), str(marker), str(step), "train", str(config), f"output_dir={out}"],
                               stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    process.log_path = log_path
    wait_for(marker.exists, process)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    return Path(marker.read_text())


@pytest.mark.slow
def test_kill_during_a_save_leaves_no_checkpoint_that_looks_complete(config, reference, tmp_path):
    out = tmp_path / "killed-saving"
    saving = kill_during_the_save_at(config, out, 6, tmp_path)
    # the save went to a staging folder; checkpoint-6 does not exist until the save is whole
    assert saving == out / ".checkpoint-in-progress" / "checkpoint-6"
    assert (saving / "adapter_model.safetensors").is_file() and not (saving / "trainer_state.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]

    result = run_cli("train", str(config), f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out}/checkpoint-3" in result.stdout and "skipping" not in result.stdout
    assert_same_curve(out, reference)
    assert not (out / ".checkpoint-in-progress").exists()
    assert (out / "checkpoint-6" / "trainer_state.json").is_file()  # saved again, whole, by the resumed run


@pytest.mark.slow
def test_a_truncated_file_in_the_latest_checkpoint_is_named_and_the_previous_one_resumes(config, reference, tmp_path):
    out = tmp_path / "truncated"
    kill_during_the_save_at(config, out, 9, tmp_path)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    weights = out / "checkpoint-6" / "adapter_model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 2)  # as a full disk or a copy cut short leaves it

    result = run_cli("train", str(config), f"output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (f"warning: skipping {out}/checkpoint-6: adapter_model.safetensors is cut short: {size // 2} bytes, "
            f"but its header says {size}") in result.stdout
    assert f"resuming from {out}/checkpoint-3" in result.stdout
    assert_same_curve(out, reference)


def test_no_good_checkpoint_stops_with_one_line_naming_it(config, tmp_path, capsys):
    from tuneforge.errors import TuneforgeError

    out = tmp_path / "out"
    train(config, out, max_steps=3)
    optimizer = out / "checkpoint-3" / "optimizer.pt"
    os.truncate(optimizer, optimizer.stat().st_size - 100)
    with pytest.raises(TuneforgeError) as error:
        train(config, out, max_steps=6)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {out} can be resumed from (checkpoint-3: see the warnings above)")
    assert "overwrite_output_dir: true" in message
    assert f"skipping {out}/checkpoint-3: optimizer.pt is cut short or damaged" in capsys.readouterr().out
    # explicitly asked for, the same checkpoint is refused with the file named
    with pytest.raises(TuneforgeError, match="cannot resume from .*checkpoint-3: optimizer.pt is cut short"):
        train(config, tmp_path / "elsewhere", resume_from_checkpoint=str(out / "checkpoint-3"))
    # weights deleted (a save_total_limit rotation killed half-way deletes files in any order)
    from tuneforge.train.hf_trainer import checkpoint_problem

    optimizer.unlink()
    assert checkpoint_problem(out / "checkpoint-3") is None  # no optimizer.pt is save_only_model's checkpoint
    (out / "checkpoint-3" / "adapter_model.safetensors").unlink()
    assert checkpoint_problem(out / "checkpoint-3") == "holds no model weights (no *.safetensors or *.bin file)"


def test_file_checks_catch_every_cut_and_pass_whole_files(tmp_path):
    """What checkpoint_problem relies on: a cut anywhere in a safetensors or torch.save file is seen from
    its header or zip directory, and a whole file passes (safetensors itself would refuse the cut ones)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from tuneforge.integrity import folder_problem, safetensors_problem, torch_file_problem

    whole = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(64), "b": torch.zeros(3, 5)}, str(whole))
    pt = tmp_path / "o.pt"
    torch.save({"state": {0: torch.ones(256)}}, pt)
    assert safetensors_problem(whole) is None and torch_file_problem(pt) is None
    data, blob = whole.read_bytes(), pt.read_bytes()
    for cut in (0, 5, 8, 20, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        assert safetensors_problem(tmp_path / "cut.safetensors"), cut
        with pytest.raises(SafetensorError):
            load_file(str(tmp_path / "cut.safetensors"))
    for cut in (0, 10, len(blob) // 2, len(blob) - 1):
        (tmp_path / "cut.pt").write_bytes(blob[:cut])
        assert torch_file_problem(tmp_path / "cut.pt"), cut
    (tmp_path / "cut.pt").unlink()
    (tmp_path / "cut.safetensors").write_bytes(data + b"\0")
    assert "header says" in safetensors_problem(tmp_path / "cut.safetensors")
    (tmp_path / "cut.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001-of-00002.safetensors"}}')
    assert folder_problem(tmp_path) == "model.safetensors.index.json lists 1 shard(s) that are missing: model-00001-of-00002.safetensors"
