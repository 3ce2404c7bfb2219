"""Several processes on CPU (gloo): `tuneforge train` under torchrun, accelerate launch and two
"nodes" on loopback train the same curve as one process with the same global batch; only rank 0
writes the outputs; a 2-process run killed with SIGKILL resumes exactly; Ctrl-C stops every rank at
the same step with a checkpoint.

The single-process reference uses per_device_train_batch_size 4, the 2-process runs 2 per process:
the same global batch (per device × processes × gradient_accumulation_steps = 8). Shuffling is off
in both (disable_shuffling), because one process draws its order with a RandomSampler and several
with a DistributedSampler: the same seed gives different orders, so only sequential order makes the
batches, and so the losses, comparable step by step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tuneforge.errors import ConfigError
from tuneforge.train.launcher import Launch, free_port, planned_launch, torchrun_command

from .conftest import REPO, run_cli

STEPS = 24
#: Loss tolerance between 1 and 2 processes: the same sums in another order (fp32 on CPU).
TOLERANCE = 1e-4


# --- the launch decision (no processes) -----------------------------------------------------------------------


@pytest.mark.parametrize("env, devices, expected", [
    ({}, 0, None),
    ({}, 1, None),
    ({"FORCE_TORCHRUN": "1"}, 0, (1, 0, 1)),
    ({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}, 0, (1, 0, 2)),
    ({"NPROC_PER_NODE": "2"}, 0, (1, 0, 2)),
    ({}, 4, (1, 0, 4)),  # several GPUs: one process each, as llamafactory-cli does
    ({"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501"}, 8, (2, 1, 8)),
    ({"FORCE_TORCHRUN": "1", "LOCAL_RANK": "0"}, 0, None),  # already started by torchrun / accelerate launch
])
def test_planned_launch_reads_llamafactory_variables(env, devices, expected):
    launch = planned_launch(env, device_count=lambda: devices)
    if expected is None:
        assert launch is None
        return
    assert (launch.nnodes, launch.node_rank, launch.nproc_per_node) == expected
    if "MASTER_ADDR" in env:
        assert (launch.master_addr, launch.master_port) == ("10.0.0.1", 29501)
    else:
        assert launch.master_addr == "127.0.0.1" and launch.master_port > 0


def test_bad_launch_variables_are_named():
    with pytest.raises(ConfigError) as error:
        planned_launch({"NNODES": "2", "NODE_RANK": "2", "NPROC_PER_NODE": "two"}, device_count=lambda: 0)
    message = str(error.value)
    assert "NPROC_PER_NODE: must be a whole number >= 1, got 'two'" in message
    assert "NODE_RANK: is 2, but NNODES=2: node ranks run from 0 to 1" in message


def test_torchrun_command_runs_this_python_and_the_same_arguments():
    command = torchrun_command(Launch(2, 1, 8, "10.0.0.1", 29500), ["train", "x.yaml", "lora_rank=4"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[command.index("--node_rank") + 1] == "1" and command[command.index("--nproc_per_node") + 1] == "8"
    assert command[-5:] == ["-m", "tuneforge.cli.main", "train", "x.yaml", "lora_rank=4"]


# --- real runs ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    rows = [{"instruction": f"What is {a} times {b}?", "input": "", "output": f"{a} times {b} is {a * b}."}
            for a in range(8) for b in range(8)]
    (root / "times.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps({"times": {"file_name": "times.json"}}))
    path = root / "full.yaml"
    path.write_text("\n".join([
        f"model_name_or_path: {tiny_model}", "template: llama3", "dataset: times", f"dataset_dir: {root}",
        "stage: sft", "finetuning_type: full", "cutoff_len: 64", "disable_shuffling: true",
        "per_device_train_batch_size: 2", "gradient_accumulation_steps: 2", f"max_steps: {STEPS}",
        "learning_rate: 1.0e-3", "lr_scheduler_type: cosine", "logging_steps: 1", "save_steps: 3",
        "report_to: none", "disable_tqdm: true", "seed: 7", "",
    ]))
    return path


def losses(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    steps = [r["current_steps"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step is logged twice (more than one rank wrote the log): {steps}"
    return {r["current_steps"]: r["loss"] for r in records if "loss" in r}


def assert_same_curve(curve, reference):
    assert sorted(curve) == list(range(1, STEPS + 1)), sorted(curve)
    worst = max(abs(curve[s] - reference[s]) for s in reference)
    assert worst <= TOLERANCE, f"largest per-step loss difference {worst:.2e} > {TOLERANCE}"


def two_processes(**extra) -> dict:
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", **extra}


@pytest.fixture(scope="module")
def single(config, tmp_path_factory):
    """One process, 4 rows per step per device × 2 accumulation: the reference curve."""
    out = tmp_path_factory.mktemp("single")
    result = run_cli("train", str(config), f"output_dir={out}", "per_device_train_batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(out)


@pytest.fixture(scope="module")
def ddp(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = run_cli("train", str(config), f"output_dir={out}", env=two_processes())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result


def test_two_processes_train_the_single_process_curve(single, ddp):
    out, result = ddp
    assert "launching 2 process(es) on node 0 of 1 (world size 2" in result.stdout
    assert_same_curve(losses(out), single)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2 and state["global_step"] == STEPS


def test_only_rank_zero_writes_and_prints(ddp):
    out, result = ddp
    assert result.stdout.count("trainable params:") == 1
    assert result.stdout.count("outputs in ") == 1
    assert result.stdout.count("training rows: ") == 1  # preprocessing reported by the node's main process
    for name in ("model.safetensors", "trainer_log.jsonl", "train_results.json", "all_results.json", "run_manifest.json",
                 "training_args.yaml", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    # every rank resumes from the same checkpoint: each saved its own RNG state into it
    checkpoint = out / f"checkpoint-{STEPS}"
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}


def test_started_by_torchrun_it_trains_without_relaunching(config, single, tmp_path):
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "tuneforge.cli.main", "train", str(config), f"output_dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ, "FORCE_TORCHRUN": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launching" not in result.stdout  # FORCE_TORCHRUN inside torchrun does not launch again
    assert_same_curve(losses(out), single)


def test_two_nodes_on_loopback_train_together(config, single, tmp_path):
    """NNODES=2, one process each, as two machines would start them (each with its own data cache)."""
    out = tmp_path / "nodes"
    port = str(free_port())
    processes = []
    for node in (0, 1):
        env = {**os.environ, "NNODES": "2", "NODE_RANK": str(node), "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "TUNEFORGE_CACHE": str(tmp_path / f"cache-{node}")}
        log = open(tmp_path / f"node{node}.log", "w")
        processes.append(subprocess.Popen([sys.executable, "-m", "tuneforge.cli.main", "train", str(config), f"output_dir={out}"],
                                          stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env))
    codes = [p.wait(timeout=600) for p in processes]
    logs = [(tmp_path / f"node{n}.log").read_text() for n in (0, 1)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "launching 1 process(es) on node 1 of 2 (world size 2" in logs[1]
    assert "outputs in" in logs[0] and "outputs in" not in logs[1]  # global rank 0 is on node 0
    assert "training rows: 64" in logs[1]  # node 1 prepared its own data (its local rank 0)
    assert_same_curve(losses(out), single)


def _start(config, out, env, *overrides):
    log = open(f"{out}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "tuneforge.cli.main", "train", str(config), f"output_dir={out}", *overrides],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **env}, start_new_session=True)


def _wait_for(condition, process, out, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended ({process.returncode}) before the test could interrupt it:\n" + open(f"{out}.log").read()[-3000:])
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("timed out")
        time.sleep(0.005)


def test_sigkill_of_a_two_process_run_resumes_exactly(config, ddp, tmp_path):
    out = tmp_path / "killed"
    process = _start(config, out, two_processes())
    _wait_for(lambda: (out / "checkpoint-3" / "trainer_state.json").exists(), process, out)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers, as a crash or an OOM kill would
    process.wait(timeout=60)
    assert not (out / "model.safetensors").exists(), "the run finished before it was killed"

    result = run_cli("train", str(config), f"output_dir={out}", env=two_processes())
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {out}/checkpoint-" in result.stdout
    assert result.stdout.count("resuming from") == 1
    assert_same_curve(losses(out), losses(ddp[0]))


def test_ctrl_c_stops_both_ranks_at_one_step_with_a_checkpoint(config, ddp, tmp_path):
    out = tmp_path / "interrupted"
    process = _start(config, out, two_processes(), "save_steps=1000")
    _wait_for(lambda: (out / "trainer_log.jsonl").exists() and (out / "trainer_log.jsonl").read_text().count('"loss"') >= 2,
              process, out)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    assert process.wait(timeout=180) == 130
    log = open(f"{out}.log").read()
    (checkpoint,) = list(out.glob("checkpoint-*"))
    step = int(checkpoint.name.split("-")[1])
    assert step < STEPS and f"stopped by SIGINT after step {step}; saved {checkpoint}" in log
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}

    result = run_cli("train", str(config), f"output_dir={out}", "save_steps=1000", env=two_processes())
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_curve(losses(out), losses(ddp[0]))


def test_accelerate_launch_with_the_shipped_fsdp_config_runs_unchanged(config, single, tmp_path):
    """On CPU accelerate runs an FSDP config as plain multi-process DDP (it enables FSDP only on GPU-family
    devices); the run must still train, and say so instead of pretending to shard."""
    out = tmp_path / "accelerate"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "examples/accelerate/fsdp_config.yaml"),
               "--mixed_precision", "no", "--main_process_port", str(free_port()),
               "-m", "tuneforge.cli.main", "train", str(config), f"output_dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "FSDP was requested" in text and "run as DDP" in text
    assert_same_curve(losses(out), single)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
                    reason="FSDP through accelerate needs 2 GPUs: accelerate 1.15 enables FSDP only on GPU-family devices")
def test_fsdp_on_two_gpus_trains_and_saves_weights_that_reload(config, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fsdp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "examples/accelerate/fsdp_config.yaml"),
               "-m", "tuneforge.cli.main", "train", str(config), f"output_dir={out}", "bf16=true", "max_steps=4"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP was requested" not in result.stdout + result.stderr
    AutoModelForCausalLM.from_pretrained(out)
