"""The CLI as a user meets it: fast start-up without torch, listing, show, check, version, env."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time

from .conftest import ANCHOR, REPO, run_cli

HEAVY = ("torch", "transformers", "peft", "trl", "datasets")


def test_help_and_plugins_do_not_import_torch_and_are_fast():
    code = (
        "import sys, io, contextlib, time\n"
        "from tuneforge.cli.main import main\n"
        "t = time.perf_counter()\n"
        "for argv in (['--help'], ['plugins'], ['plugins', '--json'], ['show', 'method', 'lora']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "print(time.perf_counter() - t)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "", f"imported: {out[1]}"
    assert float(out[0]) < 0.5


def test_plugins_listing_and_json():
    result = run_cli("plugins")
    assert result.returncode == 0
    assert any(line.split()[:2] == ["lora", "method"] and line.endswith("active") for line in result.stdout.splitlines())
    rows = json.loads(run_cli("plugins", "--json", "--kind", "stage").stdout)
    assert {r["name"] for r in rows} >= {"sft", "pt"} and all(r["kind"] == "stage" for r in rows)
    assert all(r["provider"] == "tuneforge" for r in rows)


def test_show_prints_keys_with_types_defaults_and_docs():
    out = run_cli("show", "method", "lora").stdout
    assert "method 'lora' from tuneforge" in out
    assert "lora_rank: int = 8" in out and "Rank of the LoRA matrices." in out
    result = run_cli("show", "method", "lorra")
    assert result.returncode == 2 and "did you mean 'lora'?" in result.stderr


def test_check_prints_the_plan(tiny_model):
    result = run_cli("check", "examples/train_lora/llama3_lora_sft.yaml", f"model_name_or_path={tiny_model}", f"dataset_dir={ANCHOR}")
    assert result.returncode == 0, result.stderr
    for line in ("method     lora  [tuneforge", "template   llama3", "stage      sft", "dataset    identity", "config OK"):
        assert line in result.stdout


def test_check_errors_have_no_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model_name_or_path: m\nfinetuning_type: lorra\nlora_rnak: 8\nlearning_rate: fast\n")
    result = run_cli("check", str(cfg))
    assert result.returncode == 2
    assert result.stderr.startswith("error: the config has 3 problems:") and "Traceback" not in result.stderr


def test_version_and_env():
    assert run_cli("version").stdout.strip() == "tuneforge 0.1.0"
    out = run_cli("env").stdout
    for pkg in ("python:", "torch: 2.13", "transformers:", "peft:", "trl:", "datasets:", "accelerate:", "device: cpu"):
        assert pkg in out
