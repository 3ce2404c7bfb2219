"""release_cpu_memory: on CPU training, the forward's tensor buffers of 1 MiB or more go back to the
system when freed.

What it changes is where buffers live, never a value: the training tests run with it on (every
`tuneforge train` subprocess of the suite). Here: that it takes effect (a fragmented heap keeps freed
buffers resident; a forward's buffers are returned, buffers made outside a forward are not), that
`train` turns it on by default and says so, and that false leaves the C library alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ANCHOR, REPO, run_cli

from tuneforge.train import host_memory

pytestmark = pytest.mark.skipif(not host_memory.supported()[0], reason=f"release_cpu_memory: {host_memory.supported()[1]}")

# Sixty 3 MiB buffers made inside a module's forward (or after it), then a 16 MiB one above them in
# the heap, then the sixty freed: how much RSS is given back. By default one 24 MiB buffer freed first
# raises glibc's moving mmap threshold, as the first training steps do, so the 3 MiB buffers come from
# the heap and stay resident under the pin.
_FRAGMENT = """
import os, sys, types
if sys.argv[1] != "default":
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # as `tuneforge train` asks before torch loads
import torch
from tuneforge.train import host_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
class Keeps(torch.nn.Module):
    def forward(self, x):
        self.kept = [torch.ones(3 << 18) for _ in range(60)]
        return x
model = Keeps()
if sys.argv[1] == "default":  # glibc's threshold moves up to 24 MiB, as in the first training steps
    warm = torch.ones(6 << 20); del warm
else:  # what `train` does once the model is loaded
    said = host_memory.apply(types.SimpleNamespace(training=True, config={}, model=model))
    assert said.startswith("the forward's tensor buffers of 1 MiB or more go back"), said
if sys.argv[1] == "after-forward":
    model(torch.ones(1))
    del model.kept
    model.kept = [torch.ones(3 << 18) for _ in range(60)]
else:
    model(torch.ones(1))
pin = torch.ones(4 << 20)  # 16 MiB: below both thresholds, larger than any hole: from the top of the heap
full = rss()
del model.kept
print((full - rss()) >> 20)
"""


def _returned_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], capture_output=True, text=True, check=True, cwd=REPO)
    return int(out.stdout.split()[-1])


def test_the_forwards_buffers_go_back_when_freed_where_the_heap_keeps_them():
    assert _returned_mib("forward") >= 160  # 180 MiB freed
    assert _returned_mib("default") <= 40
    assert _returned_mib("after-forward") <= 40  # outside a forward the heap serves, as by default


def _config(tiny_model, tmp_path, name, **extra):
    import yaml

    config = {"model_name_or_path": str(tiny_model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "dataset": "alpaca_en_demo", "dataset_dir": str(ANCHOR), "template": "llama3", "cutoff_len": 64,
              "max_samples": 8, "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1,
              "output_dir": str(tmp_path / name), "report_to": "none", **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_turns_it_on_by_default_and_says_so_false_keeps_the_default(tiny_model, tmp_path):
    on = run_cli("train", str(_config(tiny_model, tmp_path, "on")), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert on.returncode == 0, on.stderr[-3000:]
    assert "cpu memory: the forward's tensor buffers of 1 MiB or more go back to the system when freed (huge pages)" \
        in on.stdout, on.stdout
    off = run_cli("train", str(_config(tiny_model, tmp_path, "off", release_cpu_memory=False)),
                  env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert off.returncode == 0, off.stderr[-3000:]
    assert "cpu memory:" not in off.stdout
    losses = [[json.loads(line)["loss"] for line in (tmp_path / name / "trainer_log.jsonl").read_text().splitlines()
               if '"loss"' in line] for name in ("on", "off")]
    assert len(losses[0]) == 2 and losses[0] == losses[1]  # the same values, only their buffers live elsewhere


def test_without_huge_pages_for_torch_the_threshold_is_left_alone_and_true_says_why(tiny_model, monkeypatch):
    """In a process that loaded torch before `train` could ask for huge pages (a Python caller, this
    test), the threshold would cost more speed than it saves: left alone, silently by default, said
    when the config asks for it."""
    from tests.conftest import data_context

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    ctx = data_context(model_name_or_path=tiny_model, template="llama3")
    ctx.training = True
    assert host_memory.apply(ctx) is None
    ctx = data_context(model_name_or_path=tiny_model, template="llama3", release_cpu_memory=True)
    ctx.training = True
    said = host_memory.apply(ctx)
    assert said.startswith("release_cpu_memory: true does nothing here: torch was loaded before") and \
        "THP_MEM_ALLOC_ENABLE=1" in said
