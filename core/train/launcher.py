"""Several processes: `tuneforge train` relaunches itself under torchrun, as llamafactory-cli does.

The variables are LLaMA-Factory's: ``FORCE_TORCHRUN=1`` asks for torchrun even on one device;
``NPROC_PER_NODE`` (default: the visible GPUs), ``NNODES`` (1), ``NODE_RANK`` (0), ``MASTER_ADDR``
(127.0.0.1) and ``MASTER_PORT`` (a free port on one node; 29500 across nodes, which must agree)
shape the launch. Without them a machine with more than one GPU is also relaunched, one process per
GPU. A process already started by torchrun or `accelerate launch` (it has ``LOCAL_RANK``) trains
itself, so both launchers run configs unchanged.

Elastic launch, as llamafactory-cli does it: ``RDZV_ID`` switches to torchrun's c10d rendezvous at
MASTER_ADDR:MASTER_PORT (node ranks are then assigned by the rendezvous, NODE_RANK is not passed), with
``MIN_NNODES:MAX_NNODES`` nodes when both are set; ``MAX_RESTARTS`` (default 0) is how often torchrun
restarts the workers after a failure (each restart resumes from the last checkpoint). LLaMA-Factory reads
MAX_RESTARTS only with RDZV_ID; tuneforge passes it to torchrun either way (torchrun honours it with
the static rendezvous too), and refuses MIN_NNODES/MAX_NNODES without RDZV_ID instead of ignoring them.

No torch import here: the decision is made from the environment, and the device count is asked
only when the variables leave it open.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

from ..errors import ConfigError, Problem

TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Launch:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    rdzv_id: str | None = None
    min_nnodes: int | None = None
    max_nnodes: int | None = None
    max_restarts: int = 0

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def started_by_a_launcher(env=None) -> bool:
    """torchrun, `accelerate launch` and deepspeed set LOCAL_RANK in every process they start."""
    return "LOCAL_RANK" in (os.environ if env is None else env)


def _int(env, name: str, default: int, problems: list[Problem], minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        problems.append(Problem(name, f"must be a whole number >= {minimum}, got {raw!r}", "environment"))
        return default
    return value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.xpu.device_count()
    return 0


def planned_launch(env=None, device_count=_device_count) -> Launch | None:
    """The torchrun launch the environment (default: os.environ, read now) asks for, or None to train
    in this process."""
    env = os.environ if env is None else env
    if started_by_a_launcher(env):
        return None
    problems: list[Problem] = []
    forced = str(env.get("FORCE_TORCHRUN", "")).lower() in TRUE
    nnodes = _int(env, "NNODES", 1, problems, minimum=1)
    node_rank = _int(env, "NODE_RANK", 0, problems)
    asked = _int(env, "NPROC_PER_NODE", 0, problems, minimum=1)
    master_port = _int(env, "MASTER_PORT", 0, problems, minimum=1)
    max_restarts = _int(env, "MAX_RESTARTS", 0, problems)
    rdzv_id = (env.get("RDZV_ID") or "").strip() or None
    min_nnodes = _int(env, "MIN_NNODES", 0, problems, minimum=1) or None
    max_nnodes = _int(env, "MAX_NNODES", 0, problems, minimum=1) or None
    if (min_nnodes or max_nnodes) and rdzv_id is None:
        problems.append(Problem("MIN_NNODES" if min_nnodes else "MAX_NNODES", "needs RDZV_ID (an elastic launch's "
                                "rendezvous id, the same on every node): set RDZV_ID, or unset MIN_NNODES/MAX_NNODES",
                                "environment"))
    elif (min_nnodes is None) != (max_nnodes is None):
        problems.append(Problem("MIN_NNODES" if min_nnodes else "MAX_NNODES", "is set without "
                                f"{'MAX_NNODES' if min_nnodes else 'MIN_NNODES'}: an elastic node range needs both "
                                "(torchrun --nnodes MIN:MAX)", "environment"))
    elif min_nnodes and max_nnodes and min_nnodes > max_nnodes:
        problems.append(Problem("MIN_NNODES", f"is {min_nnodes}, more than MAX_NNODES={max_nnodes}", "environment"))
    if node_rank >= nnodes:
        problems.append(Problem("NODE_RANK", f"is {node_rank}, but NNODES={nnodes}: node ranks run from 0 to {nnodes - 1}", "environment"))
    if problems:
        raise ConfigError(problems)
    if not forced and nnodes == 1 and not asked:
        devices = device_count()
        if devices <= 1:
            return None
        asked = devices
    nproc = asked or max(1, device_count())
    if not forced and nnodes == 1 and nproc == 1:
        return None
    if not master_port:  # machines must agree on it: a fixed default once several may take part
        master_port = free_port() if nnodes == 1 and (max_nnodes or 1) == 1 else 29500
    return Launch(nnodes, node_rank, nproc, env.get("MASTER_ADDR") or "127.0.0.1", master_port,
                  rdzv_id=rdzv_id, min_nnodes=min_nnodes, max_nnodes=max_nnodes, max_restarts=max_restarts)


def torchrun_command(launch: Launch, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m tuneforge.cli.main ARGV`` (the same Python as this one);
    with RDZV_ID, the elastic form llamafactory-cli runs (c10d rendezvous, MIN:MAX nodes)."""
    if launch.rdzv_id is not None:
        nodes = f"{launch.min_nnodes}:{launch.max_nnodes}" if launch.min_nnodes else str(launch.nnodes)
        head = [
            "--nnodes", nodes,
            "--nproc_per_node", str(launch.nproc_per_node),
            "--rdzv_id", launch.rdzv_id,
            "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"{launch.master_addr}:{launch.master_port}",
        ]
    else:
        head = [
            "--nnodes", str(launch.nnodes),
            "--node_rank", str(launch.node_rank),
            "--nproc_per_node", str(launch.nproc_per_node),
            "--master_addr", launch.master_addr,
            "--master_port", str(launch.master_port),
        ]
    return [sys.executable, "-m", "torch.distributed.run", *head, "--max_restarts", str(launch.max_restarts),
            "-m", "tuneforge.cli.main", *argv]


def relaunch(launch: Launch, argv: list[str]) -> int:
    """Run torchrun and return its exit code, or 130 when the run was interrupted.

    Ctrl-C in a terminal reaches torchrun and its workers too (same process group): each worker
    finishes its step, saves a checkpoint and stops (hf_trainer's graceful stop). This process only
    notes it, whatever SIGINT disposition it inherited (a shell's background job starts with SIGINT
    ignored). A SIGTERM sent to this process alone (a scheduler) is passed on to torchrun, which
    passes it to the workers.
    """
    import signal
    import subprocess

    command = torchrun_command(launch, argv)
    if launch.rdzv_id is not None:
        nodes = f"{launch.min_nnodes}..{launch.max_nnodes}" if launch.min_nnodes else str(launch.nnodes)
        print(f"launching {launch.nproc_per_node} process(es) per node, elastic: {nodes} node(s), rendezvous "
              f"'{launch.rdzv_id}' at {launch.master_addr}:{launch.master_port}, up to {launch.max_restarts} "
              f"restart(s):\n  {' '.join(command)}", flush=True)
    else:
        print(f"launching {launch.nproc_per_node} process(es) on node {launch.node_rank} of {launch.nnodes} "
              f"(world size {launch.world_size}, master {launch.master_addr}:{launch.master_port}):\n  {' '.join(command)}",
              flush=True)
    received: list[int] = []
    process = subprocess.Popen(command)

    def note(signum, frame):
        received.append(signum)
        if signum == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print("interrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    return code
