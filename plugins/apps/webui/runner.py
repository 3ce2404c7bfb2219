"""Runs the page's jobs (train, predict, benchmark, export) as `tuneforge` subprocesses.

A job is the same command a user would type (`tuneforge train CONFIG`), so the page can never do
something the CLI would not, and a run that crashes or runs out of memory takes down only its own
process: the page reads its exit status and log and keeps working.

- Output (stdout and stderr) goes to ``running_log.txt`` in the job's folder, the file
  LLaMA-Factory's web UI writes, so a job outlives the page that started it and any page can read it.
- Progress, ETA and the loss curve come from ``trainer_log.jsonl``, which training appends to.
- Abort sends SIGINT to the job's process group, exactly what Ctrl-C in a terminal does: the trainer
  finishes its step, saves a checkpoint and exits with 130 (a second Abort stops it at once).
- One :class:`Runner` serves every browser tab of the server, so reloading the page (or opening a
  second one) shows the job that is running instead of offering to start another.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tuneforge.train.outputs import LOG_FILE

RUN_LOG = "running_log.txt"
#: Exit status of a run stopped by Ctrl-C / Abort (our CLI's, and the shell's 128 + SIGINT).
ABORTED_EXIT = 130
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RunnerBusy(RuntimeError):
    """A job is already running: the page runs one at a time, as LLaMA-Factory's does."""


@dataclass
class Progress:
    """The last line of trainer_log.jsonl."""

    current_steps: int
    total_steps: int
    percentage: float
    elapsed_time: str
    remaining_time: str | None


@dataclass
class Job:
    """One subprocess the page started."""

    kind: str  # train | predict | eval | export
    verb: str  # the tuneforge subcommand
    workdir: Path  # where the job writes: output_dir, save_dir or export_dir
    config_path: Path
    command: str  # as shown to the user
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    aborts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / RUN_LOG


@dataclass
class JobStatus:
    """What the page shows about the current (or last) job."""

    kind: str | None = None
    state: str = "idle"  # idle | running | finished | aborted | failed
    returncode: int | None = None
    workdir: Path | None = None
    command: str = ""
    log: str = ""
    progress: Progress | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    error: str = ""
    aborting: bool = False

    @property
    def running(self) -> bool:
        return self.state == "running"


class Runner:
    """Starts, watches and aborts one `tuneforge` subprocess at a time."""

    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        self._job: Job | None = None
        self._lock = threading.Lock()

    @property
    def job(self) -> Job | None:
        return self._job

    def is_running(self) -> bool:
        job = self._job
        return job is not None and job.process.poll() is None

    def start(self, kind: str, verb: str, config: dict, workdir: str | Path, *, config_name: str | None = None,
              device_count: int = 1, command: str | None = None, env: dict[str, str] | None = None) -> Job:
        """Write ``config`` to ``workdir`` and run ``tuneforge VERB CONFIG`` there in the background.

        ``device_count`` > 1 runs the job under torchrun (``FORCE_TORCHRUN``/``NPROC_PER_NODE``, the
        variables `tuneforge train` reads, as llamafactory-cli does).
        """
        with self._lock:
            if self.is_running():
                raise RunnerBusy(f"a {self._job.kind} job is running ({self._job.command})")
            workdir = Path(workdir)
            workdir.mkdir(parents=True, exist_ok=True)
            config_path = workdir / (config_name or f"webui_{kind}.yaml")
            config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
            child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
            if device_count and device_count > 1:
                child_env.update(FORCE_TORCHRUN="1", NPROC_PER_NODE=str(device_count))
            argv = self.argv(verb, config_path)
            with (workdir / RUN_LOG).open("w", encoding="utf-8") as log:
                log.write(f"$ {command or ' '.join(argv)}\n")
                log.flush()
                # A session of its own: Abort signals the whole group (torchrun and its workers), as a
                # terminal's Ctrl-C does, and a Ctrl-C aimed at the server does not reach the run.
                process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=child_env, cwd=os.getcwd(), start_new_session=True)
            self._job = Job(kind, verb, workdir, config_path, command or " ".join(argv), process)
            return self._job

    def argv(self, verb: str, config_path: Path) -> list[str]:
        """The job's command: `tuneforge VERB CONFIG` with this server's Python."""
        return [self.python, "-m", "tuneforge.cli.main", verb, str(config_path)]

    def abort(self) -> bool:
        """Ask the running job to stop: SIGINT, as Ctrl-C. The first one saves a checkpoint; a second,
        sent a while later, stops at once. Returns whether a job was running."""
        job = self._job
        if job is None or job.process.poll() is not None:
            return False
        job.aborts += 1
        try:
            os.killpg(job.process.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError, AttributeError):  # no process groups: signal the process
            job.process.send_signal(signal.SIGINT)
        return True

    def terminate(self, timeout: float = 30.0) -> None:
        """Stop a running job on server shutdown (SIGTERM: the trainer saves a checkpoint first)."""
        job = self._job
        if job is None or job.process.poll() is not None:
            return
        try:
            os.killpg(job.process.pid, signal.SIGTERM)
            job.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        job = self._job
        return None if job is None else job.process.wait(timeout)

    def status(self, log_chars: int = 20000) -> JobStatus:
        job = self._job
        if job is None:
            return JobStatus()
        code = job.process.poll()
        if code is None:
            state = "running"
        elif code == 0:
            state = "finished"
        elif code in (ABORTED_EXIT, -signal.SIGINT):
            state = "aborted"
        else:
            state = "failed"
        log = read_tail(job.log_path, log_chars)
        status = JobStatus(kind=job.kind, state=state, returncode=code, workdir=job.workdir, command=job.command,
                           log=log, aborting=state == "running" and job.aborts > 0)
        if job.kind == "train":
            status.progress, status.losses = read_trainer_log(job.workdir / LOG_FILE)
        if state == "failed":
            status.error = error_summary(log)
        return status


def read_tail(path: Path, chars: int) -> str:
    """The end of a log file, without terminal colour codes."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars * 4))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    # a progress bar that rewrites its line with \r: keep the last state of each line
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))
    return text[-chars:]


def read_trainer_log(path: Path) -> tuple[Progress | None, list[tuple[int, float]]]:
    """The latest progress and every (step, loss) point of trainer_log.jsonl."""
    progress, losses = None, []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line being written
        if "current_steps" in record:
            progress = Progress(int(record["current_steps"]), int(record.get("total_steps") or 0),
                                float(record.get("percentage") or 0.0), str(record.get("elapsed_time") or ""),
                                record.get("remaining_time"))
        if record.get("loss") is not None:
            losses.append((int(record["current_steps"]), float(record["loss"])))
    return progress, losses


def error_summary(log: str, max_lines: int = 30) -> str:
    """Why a job failed: our CLI's ``error:`` message when there is one, else the traceback's end."""
    lines = [line for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            return "\n".join(lines[i : i + max_lines])
    return "\n".join(lines[-max_lines:])


def smooth(values: list[float]) -> list[float]:
    """The smoothed curve, as training_loss.png draws it."""
    from tuneforge.plugin_helpers import smooth_curve

    return smooth_curve(values) if values else []
