"""Every bad input gets a clear error at `check` (exit 2, no traceback) naming the key, file or row;
nothing is accepted silently. Issue 16 ("Hardening") and the media-column part of issue 17.

`check` and `data` run in-process (tuneforge.cli.main.main), as a user's shell would run them, minus the
interpreter start-up.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.cli.main import main

from .conftest import ANCHOR, REPO, run_cli


def cli(*argv: str) -> tuple[int, str, str]:
    """``tuneforge ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def base(tiny_model, tmp_path) -> dict:
    return {"model_name_or_path": str(tiny_model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
            "dataset": "identity", "dataset_dir": str(ANCHOR), "template": "llama3", "cutoff_len": 256,
            "output_dir": str(tmp_path / "out"), "max_steps": 1}


def _not_utf8(tmp_path, cfg):
    return yaml.safe_dump(cfg).encode("utf-8") + b"learning_rate: 1.0e-4 # \xe9t\xe9 in Latin-1\n"


def _duplicate_key(tmp_path, cfg):
    return "learning_rate: 1.0e-4\n" + yaml.safe_dump(cfg) + "learning_rate: 5.0e-5\n"


def _dup_dataset_info(tmp_path, cfg):
    folder = tmp_path / "dup"
    folder.mkdir()
    (folder / "rows.json").write_text('[{"instruction": "q", "output": "a"}]')
    (folder / "dataset_info.json").write_text('{\n  "d": {"file_name": "rows.json"},\n  "d": {"file_name": "other.json"}\n}\n')
    return yaml.safe_dump({**cfg, "dataset": "d", "dataset_dir": str(folder)})


def _a_file(tmp_path) -> str:
    path = tmp_path / "a_file.txt"
    path.write_text("not a folder")
    return str(path)


def _empty_dir(tmp_path) -> str:
    path = tmp_path / "empty_model"
    path.mkdir(exist_ok=True)
    return str(path)


#: (id, change to the base config: a dict of keys (None removes one; a callable gets tmp_path) or a
#: function giving the whole file, words the error must contain)
BAD_CONFIGS = [
    ("model-path-missing", {"model_name_or_path": "/no/such/model"}, ["model_name_or_path", "/no/such/model", "does not exist"]),
    ("model-path-relative-missing", {"model_name_or_path": "./models/none"}, ["model_name_or_path", "does not exist"]),
    ("model-path-is-file", {"model_name_or_path": _a_file}, ["model_name_or_path", "is a file"]),
    ("model-folder-without-config", {"model_name_or_path": _empty_dir}, ["model_name_or_path", "no config.json"]),
    ("learning-rate-negative", {"learning_rate": -1e-4}, ["learning_rate", "must be >= 0", "-0.0001"]),
    ("learning-rate-nan", {"learning_rate": float("nan")}, ["learning_rate", "nan"]),
    ("learning-rate-word", {"learning_rate": "fast"}, ["learning_rate", "expected int | float", "'fast'"]),
    ("batch-size-zero", {"per_device_train_batch_size": 0}, ["per_device_train_batch_size", "must be >= 1", "got 0"]),
    ("eval-batch-size-zero", {"per_device_eval_batch_size": 0}, ["per_device_eval_batch_size", ">= 1"]),
    ("gradient-accumulation-zero", {"gradient_accumulation_steps": 0}, ["gradient_accumulation_steps", ">= 1"]),
    ("output-dir-is-file", {"output_dir": _a_file}, ["output_dir", "is a file"]),
    ("output-dir-under-a-file", {"output_dir": lambda t: _a_file(t) + "/run"}, ["output_dir", "cannot be created", "is a file"]),
    ("config-not-utf8", _not_utf8, ["not UTF-8", "byte offset", "cfg.yaml:"]),
    ("scheduler-name", {"lr_scheduler_type": "cosinee"}, ["lr_scheduler_type", "'cosinee' is not one of", "did you mean 'cosine'"]),
    ("optimizer-name", {"optim": "adamw_torh"}, ["optim", "'adamw_torh'", "did you mean 'adamw_torch'"]),
    ("eval-strategy-name", {"eval_strategy": "step"}, ["eval_strategy", "did you mean 'steps'"]),
    ("save-strategy-name", {"save_strategy": "epochs"}, ["save_strategy", "did you mean 'epoch'"]),
    ("no-dataset", {"dataset": None}, ["dataset", "do_train: true needs training data"]),
    ("cutoff-negative", {"cutoff_len": -5}, ["cutoff_len", "must be >= 1", "-5"]),
    ("cutoff-far-beyond-context", {"cutoff_len": 100000}, ["cutoff_len", "max_position_embeddings is 2048", "at most 2048"]),
    ("bf16-with-fp16", {"bf16": True, "fp16": True}, ["bf16", "fp16", "cannot both be set"]),
    ("pure-bf16-with-fp16", {"pure_bf16": True, "fp16": True}, ["pure_bf16", "fp16", "cannot both be set"]),
    ("train-on-prompt-with-mask-history", {"train_on_prompt": True, "mask_history": True},
     ["train_on_prompt", "mask_history", "cannot both be set"]),
    ("duplicate-yaml-key", _duplicate_key, ["learning_rate", "set twice", "lines 1 and"]),
    ("epochs-negative", {"num_train_epochs": -1, "max_steps": None}, ["num_train_epochs", "must be >= 0", "-1"]),
    ("epochs-zero", {"num_train_epochs": 0, "max_steps": None}, ["num_train_epochs", "0 steps"]),
    ("max-steps-zero", {"max_steps": 0}, ["max_steps", ">= 1 (or -1)"]),
    ("warmup-ratio-above-1", {"warmup_ratio": 1.5}, ["warmup_ratio", "<= 1"]),
    ("adapter-missing", {"adapter_name_or_path": "/no/such/adapter"}, ["adapter_name_or_path", "does not exist"]),
    ("adapter-second-of-list-missing", {"adapter_name_or_path": lambda t: f"{_empty_dir(t)},/no/such/adapter2"},
     ["adapter_name_or_path", "/no/such/adapter2", "does not exist"]),
    ("dataset-dir-missing", {"dataset_dir": "/no/such/data"}, ["dataset_dir", "does not exist"]),
    ("dataset-dir-is-file", {"dataset_dir": _a_file}, ["dataset_dir", "is a file"]),
    ("deepspeed-config-missing", {"deepspeed": "/no/such/ds.json"}, ["deepspeed", "is not a file"]),
    ("resume-checkpoint-missing", {"resume_from_checkpoint": "/no/such/checkpoint-5"}, ["resume_from_checkpoint", "does not exist"]),
    ("tokenized-path-under-file", {"tokenized_path": lambda t: _a_file(t) + "/tok"}, ["tokenized_path", "cannot be created"]),
    ("report-to-name", {"report_to": ["tensorboard", "wandbb"]}, ["report_to", "'wandbb' is not one of", "did you mean 'wandb'"]),
    ("unknown-dataset", {"dataset": "identiy"}, ["unknown dataset 'identiy'", "did you mean 'identity'"]),
    ("duplicate-dataset-in-dataset-info", _dup_dataset_info, ["'d' is defined twice", "lines 2, 3"]),
    ("media-column-to-text-model", {"dataset": "mllm_demo"},
     ["mllm_demo", "media column 'images'", "text-only model", "\"images\": null"]),
    ("lora-rank-zero", {"lora_rank": 0}, ["lora_rank"]),
    ("unknown-key", {"lerning_rate": 1e-4}, ["lerning_rate", "did you mean 'learning_rate'"]),
    ("top-p-above-1", {"top_p": 1.5}, ["top_p", "<= 1"]),
    ("max-samples-zero", {"max_samples": 0}, ["max_samples", ">= 1"]),
    ("val-size-negative", {"val_size": -0.1}, ["val_size", ">= 0"]),
    ("seed-negative", {"seed": -3}, ["seed", ">= 0"]),
    ("unknown-stage", {"stage": "sftt"}, ["stage", "did you mean 'sft'"]),
    ("unknown-template", {"template": "llama33"}, ["template", "llama33"]),
    ("streaming-without-max-steps", {"streaming": True, "max_steps": None}, ["streaming", "needs max_steps"]),
    ("yaml-not-a-mapping", lambda t, c: "- a\n- b\n", ["must be a mapping"]),
    ("yaml-syntax", lambda t, c: "model_name_or_path: [m\n", ["not valid YAML"]),
]


def write_config(tmp_path: Path, base: dict, change) -> Path:
    path = tmp_path / "cfg.yaml"
    if callable(change):
        text = change(tmp_path, base)
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        return path
    cfg = dict(base)
    for key, value in change.items():
        value = value(tmp_path) if callable(value) else value
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.mark.parametrize("name,change,words", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_named_at_check(name, change, words, base, tmp_path):
    code, out, err = cli("check", str(write_config(tmp_path, base, change)))
    assert code == 2, f"{name}: check passed:\n{out}"
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err, f"{name}: {word!r} missing from:\n{err}"


def test_the_base_config_passes(base, tmp_path):
    code, out, err = cli("check", str(write_config(tmp_path, base, {})))
    assert code == 0, err
    assert "warning" not in out


def test_a_hub_id_is_not_a_path(base, tmp_path):
    # (an adapter hub id is checked against the local cache when HF_HUB_OFFLINE=1: tests/test_config.py)
    code, _, err = cli("check", str(write_config(tmp_path, base, {"model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"})))
    assert code == 0, err


def test_template_of_another_family_and_long_cutoff_are_warned(base, tmp_path):
    code, out, err = cli("check", str(write_config(tmp_path, base, {"template": "qwen", "cutoff_len": 3000})))
    assert code == 0, err
    warning = next(line for line in out.splitlines() if line.startswith("warning: template 'qwen'"))
    assert "'llama3' family" in warning and "<|start_header_id|>" in warning and "set template: llama3" in warning
    assert any("cutoff_len 3000 is beyond the model's context" in line for line in out.splitlines())


def test_val_size_beside_eval_dataset_is_warned(base, tmp_path):
    code, out, err = cli("check", str(write_config(tmp_path, base, {"eval_dataset": "identity", "val_size": 0.1})))
    assert code == 0, err
    assert "warning: val_size" in out and "is not used" in out


def test_media_column_set_to_null_trains_on_the_text_on_purpose(base, tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    rows = json.loads((ANCHOR / "mllm_demo.json").read_text(encoding="utf-8"))
    (folder / "mm.json").write_text(json.dumps(rows), encoding="utf-8")
    entry = json.loads((ANCHOR / "dataset_info.json").read_text(encoding="utf-8"))["mllm_demo"]
    # the entry without its images column: the rows still carry images, which would be dropped silently
    silent = {**entry, "file_name": "mm.json", "columns": {k: v for k, v in entry["columns"].items() if k != "images"}}
    on_purpose = {**silent, "columns": {**silent["columns"], "images": None}}
    (folder / "dataset_info.json").write_text(json.dumps({"silent": silent, "on_purpose": on_purpose}), encoding="utf-8")
    cfg = write_config(tmp_path, base, {"dataset": "silent", "dataset_dir": str(folder)})
    code, out, err = cli("data", str(cfg))
    assert code == 2 and "Traceback" not in err
    assert "dataset 'silent'" in err and "row 1 has a non-empty 'images' field" in err and '"images": null' in err
    code, out, err = cli("data", str(cfg), "dataset=on_purpose")
    assert code == 0, err


def test_llamafactory_mllm_demo_is_refused_by_check_and_data(base, tmp_path):
    cfg = write_config(tmp_path, base, {"dataset": "mllm_demo"})
    for verb in ("check", "data"):
        code, out, err = cli(verb, str(cfg))
        assert code == 2 and "dataset 'mllm_demo' has the media column 'images'" in err and "text-only model" in err, verb


# --- data files --------------------------------------------------------------------------------------


def _data_config(tmp_path, base, file_name: str, content: bytes | str, **extra) -> Path:
    path = tmp_path / file_name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return write_config(tmp_path, base, {"dataset": str(path), **extra})


@pytest.mark.parametrize("file_name", ["rows.json", "rows.jsonl", "rows.txt"])
def test_non_utf8_data_file_is_named_with_byte_offset(base, tmp_path, file_name):
    good = '{"instruction": "q", "output": "a"}\n'
    content = (good * 2).encode() + b'{"instruction": "caf\xe9", "output": "a"}\n'
    if file_name.endswith(".json"):
        content = b"[" + content.replace(b"}\n{", b"},\n{").rstrip(b"\n") + b"]"
    if file_name.endswith(".txt"):
        content = b"one line\nanother\ncaf\xe9\n"
    extra = {"stage": "pt"} if file_name.endswith(".txt") else {}
    code, out, err = cli("data", str(_data_config(tmp_path, base, file_name, content, **extra)))
    assert code == 2 and "Traceback" not in err, err
    assert f"{tmp_path / file_name}:3: not UTF-8" in err and "byte offset" in err
    offset = int(err.split("byte offset ")[1].split(":")[0])
    assert content[offset:offset + 1] == b"\xe9"


def test_top_level_json_object_is_not_one_row(base, tmp_path):
    cfg = _data_config(tmp_path, base, "rows.json", json.dumps({"instruction": "q", "output": "a"}))
    code, out, err = cli("data", str(cfg))
    assert code == 2 and "one JSON object" in err and "not a list of rows" in err and "rows.json" in err


def test_broken_jsonl_line_is_a_bad_row_and_skip_bad_rows_skips_it(base, tmp_path):
    lines = ['{"instruction": "q1", "output": "a1"}', '{"instruction": "q2", "output": ', "",
             '{"instruction": "q3", "output": "a3"}']
    cfg = _data_config(tmp_path, base, "rows.jsonl", "\n".join(lines) + "\n")
    code, out, err = cli("data", str(cfg))
    assert code == 2, out + err  # as `train` exits for bad rows
    assert f"{tmp_path / 'rows.jsonl'}: row 2: line 2: not valid JSON" in out
    assert "1 bad row(s)" in err
    code, out, err = cli("data", str(cfg), "skip_bad_rows=true")
    assert code == 0, err
    assert "result: OK (2 rows ready, 1 bad row(s) skipped)" in out


def test_data_and_train_exit_2_for_the_same_bad_rows(base, tmp_path):
    cfg = _data_config(tmp_path, base, "rows.json", json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}]))
    assert cli("data", str(cfg))[0] == 2
    result = run_cli("train", str(cfg))
    assert result.returncode == 2 and "row 2: output: empty response" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_reports_rows_truncated_at_cutoff_len(base, tmp_path):
    rows = [{"instruction": "word " * 200, "output": "short"}, {"instruction": "q", "output": "a"}] * 2
    cfg = _data_config(tmp_path, base, "rows.json", json.dumps(rows), cutoff_len=64, report_to="none",
                       per_device_train_batch_size=1)
    result = run_cli("train", str(cfg), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training data: 2 of 4 row(s) truncated to cutoff_len=64" in result.stdout
    # the same count from the cache on the next run
    again = run_cli("train", str(cfg), "overwrite_output_dir=true", env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert "2 of 4 row(s) truncated to cutoff_len=64 (" in again.stdout and "[when the cache was built]" in again.stdout


# --- the CLI under a closed pipe ---------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["plugins"], ["plugins", "--json"], ["show", "method", "lora"], ["--help"], ["version"]])
def test_closed_pipe_ends_quietly(argv):
    """`tuneforge plugins | head -0`: the reader is gone before the first write (so it always breaks)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "tuneforge.cli.main", *argv], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
    finally:
        os.close(write_end)
    assert result.returncode in (0, 1)
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr


def test_train_without_a_dataset_stops_before_loading_the_model(base, tmp_path):
    cfg = write_config(tmp_path, base, {"dataset": None, "do_train": None})
    assert cli("check", str(cfg))[0] == 0  # a config without data is fine for chat or export
    code, out, err = cli("train", str(cfg))
    assert code == 2 and "`tuneforge train` needs training data" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_broken_json_document_is_one_error_with_its_line(base, tmp_path):
    cfg = _data_config(tmp_path, base, "rows.json", '{\n  "instruction": "q",\n  "output": "a",\n}\n')
    code, out, err = cli("data", str(cfg))
    assert code == 2 and f"{tmp_path / 'rows.json'}:4: not valid JSON" in err and ": row " not in err
