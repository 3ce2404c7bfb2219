"""Several processes on CPU (gloo): `tuneforge train` under torchrun, accelerate launch and two
"nodes" on loopback train the same curve as one process with the same global batch; only rank 0
writes the outputs; a 2-process run killed with SIGKILL resumes exactly; Ctrl-C stops every rank at
the same step with a checkpoint; every method (LoRA, QLoRA, full, freeze) with the defaults a user gets
(gradient checkpointing on) trains the same curve on 2 processes as on 1.

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
#: Loss tolerance between 1 and 2 processes: the same sums in another order (fp32 on CPU). Measured
#: differences are ~1e-6 on losses of ~7 (QLoRA included: the 4-bit weights dequantize identically on each
#: rank), so 1e-4 leaves a wide margin for other CPUs while staying far below one step's loss change
#: (1e-2 and more at these learning rates): a rank that trained other rows, or gradients summed instead of
#: averaged, fails it.
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


def test_elastic_variables_make_the_llamafactory_elastic_torchrun_command():
    """RDZV_ID: c10d rendezvous at MASTER_ADDR:MASTER_PORT, MIN_NNODES:MAX_NNODES nodes, MAX_RESTARTS restarts,
    and no --node_rank (the rendezvous assigns it), as llamafactory-cli launches it."""
    env = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "8", "NNODES": "2", "RDZV_ID": "job7", "MIN_NNODES": "1",
           "MAX_NNODES": "4", "MAX_RESTARTS": "3", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    command = torchrun_command(planned_launch(env, device_count=lambda: 0), ["train", "x.yaml"])
    flags = dict(zip(command[3:-4:2], command[4:-4:2]))
    assert flags == {"--nnodes": "1:4", "--nproc_per_node": "8", "--rdzv_id": "job7", "--rdzv_backend": "c10d",
                     "--rdzv_endpoint": "10.0.0.1:29400", "--max_restarts": "3"}
    # RDZV_ID alone: the fixed NNODES through the rendezvous; MAX_RESTARTS defaults to 0
    command = torchrun_command(planned_launch({**env, "MIN_NNODES": "", "MAX_NNODES": "", "MAX_RESTARTS": ""},
                                              device_count=lambda: 0), ["train", "x.yaml"])
    assert command[command.index("--nnodes") + 1] == "2" and command[command.index("--max_restarts") + 1] == "0"
    # without RDZV_ID: the static launch, and MAX_RESTARTS still reaches torchrun (never dropped silently)
    static = torchrun_command(planned_launch({"NPROC_PER_NODE": "2", "MAX_RESTARTS": "2"}, device_count=lambda: 0), ["train"])
    assert "--rdzv_id" not in static and static[static.index("--max_restarts") + 1] == "2"
    assert static[static.index("--node_rank") + 1] == "0"
    # an elastic range of machines without MASTER_PORT: every machine must find the same endpoint
    elastic = planned_launch({"FORCE_TORCHRUN": "1", "RDZV_ID": "j", "MIN_NNODES": "1", "MAX_NNODES": "2"},
                             device_count=lambda: 0)
    assert elastic.master_port == 29500


@pytest.mark.parametrize("env, message", [
    ({"MIN_NNODES": "1", "MAX_NNODES": "2"}, "MIN_NNODES: needs RDZV_ID"),
    ({"RDZV_ID": "j", "MIN_NNODES": "2"}, "MIN_NNODES: is set without MAX_NNODES"),
    ({"RDZV_ID": "j", "MIN_NNODES": "3", "MAX_NNODES": "2"}, "MIN_NNODES: is 3, more than MAX_NNODES=2"),
    ({"MAX_RESTARTS": "-1"}, "MAX_RESTARTS: must be a whole number >= 0, got '-1'"),
    ({"RDZV_ID": "j", "MIN_NNODES": "0", "MAX_NNODES": "2"}, "MIN_NNODES: must be a whole number >= 1, got '0'"),
])
def test_bad_elastic_variables_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        planned_launch({"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", **env}, device_count=lambda: 0)


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
        "report_to: none", "disable_tqdm: true", "seed: 7",
        # LLaMA-Factory's default (checkpointing always on); ours leaves it to the planner, which turns it
        # off for a model this small: set it, so the runs below go through DDP with checkpointing
        "disable_gradient_checkpointing: false", "",
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
    cache = tmp_path_factory.mktemp("ddp-cache")  # a cold cache: the run must preprocess (once)
    result = run_cli("train", str(config), f"output_dir={out}", env=two_processes(TUNEFORGE_CACHE=str(cache)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result


def test_two_processes_train_the_single_process_curve(single, ddp):
    out, result = ddp
    assert "launching 2 process(es) on node 0 of 1 (world size 2" in result.stdout
    assert_same_curve(losses(out), single)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2 and state["global_step"] == STEPS
    import torch  # full fine-tuning with gradient checkpointing on, as LLaMA-Factory's default has it

    assert torch.load(out / "training_args.bin", weights_only=False).activation_checkpointing is True


def test_only_rank_zero_writes_and_prints(ddp):
    out, result = ddp
    assert result.stdout.count("trainable params:") == 1
    assert result.stdout.count("outputs in ") == 1
    assert result.stdout.count("training rows: ") == 1  # preprocessing reported by the node's main process
    # one process tokenised; the other waited for the cache entry on disk (no collective) and read it
    assert (result.stdout + result.stderr).count("Tokenising training data:   0%") == 1
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


@pytest.mark.slow
def test_elastic_launch_on_loopback_trains_the_same_curve(config, ddp, tmp_path):
    """RDZV_ID + MAX_RESTARTS: torchrun's c10d rendezvous on 127.0.0.1, 2 processes: the 2-process curve."""
    out = tmp_path / "elastic"
    result = run_cli("train", str(config), f"output_dir={out}",
                     env=two_processes(RDZV_ID="tuneforge-test", MAX_RESTARTS="1", MASTER_PORT=str(free_port())))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "elastic: 1 node(s), rendezvous 'tuneforge-test'" in result.stdout and "--rdzv_backend c10d" in result.stdout
    assert_same_curve(losses(out), losses(ddp[0]))


def test_ray_train_with_two_cpu_workers_trains_the_torchrun_curve(config, ddp, tmp_path):
    """USE_RAY=1 with LLaMA-Factory's keys: Ray Train starts 2 CPU workers (gloo), each runs tuneforge's
    training; the per-step losses are those of the 2-process torchrun run, outputs land in output_dir and
    Ray's run record (with the reported checkpoints) in ray_storage_path/ray_run_name. One Ray run: Ray's
    start-up is most of this test's time."""
    pytest.importorskip("ray.train", reason="Ray Train is optional: pip install 'tuneforge[ray]'")
    out, storage = tmp_path / "ray-out", tmp_path / "ray-saves"
    result = run_cli("train", str(config), f"output_dir={out}", "ray_num_workers=2", "ray_run_name=tiny",
                     f"ray_storage_path={storage}", "resources_per_worker={\"CPU\": 1}", f"save_steps={STEPS // 2}",
                     # a local Ray instance of 2 CPUs without its dashboard: less to start on CI's 2 cores
                     'ray_init_kwargs={"num_cpus": 2, "include_dashboard": false}',
                     env={"USE_RAY": "1", "RAY_DEDUP_LOGS": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "launching 2 Ray Train worker(s), {'CPU': 1} each (PACK)" in result.stdout
    assert_same_curve(losses(out), losses(ddp[0]))  # one log: only global rank 0 wrote it
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2 and state["global_step"] == STEPS
    assert (out / "model.safetensors").is_file() and (out / "run_manifest.json").is_file()
    reported = sorted(p.name for p in (storage / "tiny").glob("checkpoint-*"))
    assert reported == [f"checkpoint-{STEPS // 2}", f"checkpoint-{STEPS}"]
    assert {p.name for p in (storage / "tiny" / f"checkpoint-{STEPS}").glob("rng_state_*.pth")} == {
        "rng_state_0.pth", "rng_state_1.pth"}


# --- every method with the defaults a user gets: 2 processes train the 1-process curve ---------------------------

METHOD_STEPS = 4
#: Each case is what a user writes (LLaMA-Factory's example configs) with gradient checkpointing on, as
#: LLaMA-Factory always has it (the module's config says so; ours would let the planner decide), except in the
#: one case that turns it off. `full` with checkpointing on is the module's
#: ``config`` itself (test_two_processes_train_the_single_process_curve).
METHODS = {
    "lora": ["finetuning_type=lora", "lora_target=all"],
    "lora-reentrant": ["finetuning_type=lora", "lora_target=all", "use_reentrant_gc=true"],  # LLaMA-Factory's flavour
    "qlora": ["finetuning_type=lora", "lora_target=all", "quantization_bit=4"],
    "freeze": ["finetuning_type=freeze"],
    "full-no-gc": ["finetuning_type=full", "disable_gradient_checkpointing=true"],
}


def _qlora_runs_here() -> str | None:
    """Why QLoRA cannot run on this machine, or None (bitsandbytes 0.50 has CPU 4-bit kernels)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "needs the quant extra: pip install 'tuneforge[quant]'"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_with_its_defaults_trains_the_same_curve_on_two_processes(config, method, tmp_path):
    """The run that used to die at the first backward ("lora_B ... marked as ready twice": reentrant
    checkpointing under DDP) trains, with the losses of one process; gradient checkpointing really was on."""
    import torch

    if method == "qlora" and (why := _qlora_runs_here()):
        pytest.skip(why)
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.pipeline import run_training

    overrides = [*METHODS[method], f"max_steps={METHOD_STEPS}", "save_steps=1000"]
    # the reference in this process (no interpreter start-up: these tests are the slow part of the suite)
    run_training(prepare(config, [f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=4", *overrides],
                         manager=PluginManager(autoload=False)))
    two = run_cli("train", str(config), f"output_dir={tmp_path / 'two'}", *overrides, env=two_processes())
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    reference, curve = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(curve) == sorted(reference) == list(range(1, METHOD_STEPS + 1))
    worst = max(abs(curve[s] - reference[s]) for s in reference)
    assert worst <= TOLERANCE, f"{method}: largest per-step loss difference {worst:.2e} > {TOLERANCE}"
    assert reference[METHOD_STEPS] < reference[1]  # it trained (a frozen model would also give equal curves)
    args = torch.load(tmp_path / "two" / "training_args.bin", weights_only=False)
    assert args.world_size == 2
    assert args.activation_checkpointing == ("no-gc" not in method)
    if args.activation_checkpointing:
        reentrant = method == "lora-reentrant"
        assert args.activation_checkpointing_kwargs == {"use_reentrant": reentrant}
        # LLaMA-Factory's rule for the reentrant flavour; the default flavour keeps transformers' own choice
        assert args.ddp_find_unused_parameters is (False if reentrant else None)


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


# --- DeepSpeed and multi-process rules, checked before anything starts --------------------------------------------


def _problems(config, *overrides) -> str:
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager

    try:
        prepare(config, list(overrides), manager=PluginManager(autoload=False))
    except ConfigError as error:
        return str(error)
    return ""


@pytest.mark.parametrize("name, stage, offload", [
    ("ds_z0_config.json", 0, False), ("ds_z2_config.json", 2, False), ("ds_z2_offload_config.json", 2, True),
    ("ds_z3_config.json", 3, False), ("ds_z3_offload_config.json", 3, True),
])
def test_shipped_deepspeed_configs_say_what_their_names_say(name, stage, offload):
    data = json.loads((REPO / "examples" / "deepspeed" / name).read_text())
    zero = data["zero_optimization"]
    assert zero["stage"] == stage and ("offload_optimizer" in zero) == offload
    # the batch sizes come from the tuneforge config (HF fills "auto"), so one file serves every run
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert data[key] == "auto"
    assert data["bf16"]["enabled"] == "auto" and data["fp16"]["enabled"] == "auto"


def test_deepspeed_config_problems_are_reported_at_check_time(config, tmp_path):
    assert "deepspeed: nope.json is not a file; point it at a DeepSpeed JSON config" in _problems(config, "deepspeed=nope.json")
    (tmp_path / "bad.json").write_text("{stage: 3")
    assert f"deepspeed: {tmp_path / 'bad.json'} is not valid JSON" in _problems(config, f"deepspeed={tmp_path / 'bad.json'}")
    (tmp_path / "z5.json").write_text('{"zero_optimization": {"stage": 5}}')
    assert "zero_optimization.stage must be 0, 1, 2 or 3, got 5" in _problems(config, f"deepspeed={tmp_path / 'z5.json'}")


def test_missing_deepspeed_package_is_a_clear_error_with_the_pip_command(config):
    import importlib.util

    found = _problems(config, f"deepspeed={REPO / 'examples/deepspeed/ds_z3_config.json'}")
    if importlib.util.find_spec("deepspeed") is None:
        assert "the deepspeed package is not installed: pip install deepspeed" in found
    else:
        assert "deepspeed" not in found


def test_what_cannot_run_on_several_processes_is_rejected_with_the_reason(config, monkeypatch):
    pytest.importorskip("galore_torch", reason="needs the optim extra")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    found = _problems(config, "use_galore=true", "galore_layerwise=true")
    assert "galore_layerwise does not support distributed training (2 processes" in found
    monkeypatch.delenv("NPROC_PER_NODE")
    found = _problems(config, "use_badam=true", f"deepspeed={REPO / 'examples/deepspeed/ds_z3_config.json'}")
    assert "BAdam with DeepSpeed ZeRO-3 is not supported" in found
