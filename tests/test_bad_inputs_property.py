"""Property-based: generated configs and data rows, valid and broken. `check`, `data` and `train` either
succeed or exit 2 with a message naming every broken key or row: never a traceback, never a silent
drop, never a broken value accepted.

Examples are derandomized (the same ones every run, so CI is reproducible) and few: the whole file
runs in about a minute on two busy cores; `train` gets three examples.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
import yaml

from tuneforge.cli.main import main
from tuneforge.config.hf_training_args import OPTIMIZER_NAMES, SCHEDULER_TYPES

from .conftest import ANCHOR

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra)")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
WORK = Path(tempfile.mkdtemp(prefix="tuneforge-property-"))
A_FILE = WORK / "a_file.txt"
A_FILE.write_text("not a folder")


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))  # an exception here is a traceback for the user: the test fails with it
    return code, out.getvalue(), err.getvalue()


def _words(alphabet="abcdefghijklmnopqrstuvwxyz_"):
    return st.text(alphabet, min_size=1, max_size=12)


#: key -> (strategy of valid values, strategy of broken values). Broken: wrong type, out of range,
#: unknown choice, missing or wrong-kind path.
KEYS = {
    # (a learning rate of 0 is allowed, as in LLaMA-Factory: it freezes the run for a dry pass)
    "learning_rate": (st.floats(0.0, 1.0), st.one_of(st.floats(max_value=-1e-9, allow_nan=False), _words())),
    "per_device_train_batch_size": (st.integers(1, 4), st.one_of(st.integers(max_value=0), st.just(1.5), _words())),
    "num_train_epochs": (st.floats(0.5, 3.0), st.floats(max_value=-0.01, allow_nan=False, allow_infinity=False)),
    # (cutoff_len far beyond the model's context is in test_bad_inputs.py: it needs a valid model to compare with)
    "cutoff_len": (st.integers(64, 2048), st.integers(max_value=0)),
    "lr_scheduler_type": (st.sampled_from(["linear", "cosine", "constant", "constant_with_warmup"]),
                          _words().filter(lambda w: w not in SCHEDULER_TYPES)),
    "optim": (st.sampled_from(["adamw_torch", "sgd", "adafactor"]), _words().filter(lambda w: w not in OPTIMIZER_NAMES)),
    "warmup_ratio": (st.floats(0.0, 1.0), st.one_of(st.floats(1.01, 100.0), st.floats(-100.0, -0.01))),
    "max_samples": (st.integers(1, 100), st.integers(-5, 0)),
    "gradient_accumulation_steps": (st.integers(1, 4), st.integers(-3, 0)),
    "lora_rank": (st.integers(1, 16), st.one_of(st.integers(-4, 0), _words())),
    "logging_steps": (st.integers(1, 10), st.integers(-5, 0)),
    "model_name_or_path": (st.just("TINY"), st.sampled_from(["/no/such/model", "./no/such/model", str(A_FILE), str(WORK)])),
    "output_dir": (st.just(str(WORK / "out")), st.sampled_from([str(A_FILE), str(A_FILE / "run")])),
    "dataset_dir": (st.just(str(ANCHOR)), st.sampled_from(["/no/such/data", str(A_FILE)])),
    "template": (st.just("llama3"), _words().map(lambda w: "zz_" + w)),
    "bf16": (st.booleans(), st.integers(2, 9)),
    "do_sample": (st.booleans(), _words().filter(lambda w: w not in ("true", "false"))),
}


@st.composite
def configs(draw):
    """(config, broken key names): a base that passes plus some keys set to valid or broken values."""
    chosen = draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=5, unique=True))
    config = {"stage": "sft", "do_train": True, "finetuning_type": "lora", "dataset": "identity",
              "dataset_dir": str(ANCHOR), "template": "llama3", "output_dir": str(WORK / "out"), "max_steps": 1,
              "model_name_or_path": "TINY"}
    broken = []
    for key in chosen:
        valid, bad = KEYS[key]
        if draw(st.booleans()):
            config[key] = draw(bad)
            broken.append(key)
        else:
            config[key] = draw(valid)
    return config, broken


@settings(max_examples=60, **SETTINGS)
@given(case=configs())
def test_check_accepts_valid_configs_and_names_every_broken_key(case, tiny_model):
    config, broken = case
    event(f"{len(broken)} broken key(s)")
    config = {k: (str(tiny_model) if v == "TINY" else v) for k, v in config.items()}
    path = WORK / "cfg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, out, err = cli("check", str(path))
    if not broken:
        assert code == 0, f"a valid config was refused:\n{config}\n{err}"
        return
    assert code == 2, f"broken {broken} accepted:\n{config}\n{out}"
    assert err.startswith("error: ") and "Traceback" not in err
    for key in broken:
        assert key in err, f"{key} not named:\n{err}"


# --- data rows ---------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]), min_size=1, max_size=40)

ROW_KINDS = {
    "valid": lambda d: json.dumps({"instruction": d(_TEXT), "output": d(_TEXT)}, ensure_ascii=False),
    "valid-with-input": lambda d: json.dumps({"instruction": d(_TEXT), "input": d(_TEXT), "output": d(_TEXT)}, ensure_ascii=False),
    "missing-output": lambda d: json.dumps({"instruction": d(_TEXT)}, ensure_ascii=False),
    "blank-output": lambda d: json.dumps({"instruction": d(_TEXT), "output": " " * d(st.integers(0, 3))}),
    "output-not-text": lambda d: json.dumps({"instruction": d(_TEXT), "output": d(st.one_of(st.integers(), st.lists(st.integers(), max_size=2)))}),
    "missing-instruction": lambda d: json.dumps({"output": d(_TEXT)}, ensure_ascii=False),
    "not-an-object": lambda d: json.dumps(d(st.one_of(st.integers(), st.lists(st.integers(), max_size=2), _TEXT))),
    "broken-json": lambda d: '{"instruction": ' + json.dumps(d(_TEXT)) + ', "output": ',
}


@st.composite
def data_files(draw):
    """(JSONL text, 1-based row numbers of the broken rows, skip_bad_rows)."""
    # valid rows are drawn about half the time, so files mix good and bad rows
    weighted = ["valid", "valid", "valid", "valid-with-input", "valid-with-input", "valid-with-input", *sorted(ROW_KINDS)]
    kinds = draw(st.lists(st.sampled_from(weighted), min_size=1, max_size=8))
    lines = [ROW_KINDS[kind](draw) for kind in kinds]
    broken = [i + 1 for i, kind in enumerate(kinds) if not kind.startswith("valid")]
    return "\n".join(lines) + "\n", broken, draw(st.booleans())


def _data_config(tiny_model, text: str, skip: bool, name: str) -> Path:
    """A config training on ``text`` as dataset ``name`` (alpaca, registered in a dataset_info.json)."""
    folder = WORK / "data"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.jsonl").write_text(text, encoding="utf-8")
    (folder / "dataset_info.json").write_text(json.dumps({n: {"file_name": f"{n}.jsonl", "formatting": "alpaca"}
                                                          for n in ("data", "train")}), encoding="utf-8")
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "template": "llama3", "dataset": name, "dataset_dir": str(folder), "cutoff_len": 1024,
        "output_dir": str(WORK / f"{name}-out"), "overwrite_output_dir": True, "max_steps": 1,
        "per_device_train_batch_size": 2, "report_to": "none", "skip_bad_rows": skip, "save_strategy": "no",
        "disable_tqdm": True, "overwrite_cache": True,
    }), encoding="utf-8")
    return path


def _assert_outcome(code, out, err, broken, skip, total, rows_file):
    assert "Traceback" not in err
    if not broken:
        assert code == 0, err
    elif skip and len(broken) < total:
        assert code == 0, err
        said = out.replace(" bad row(s) skipped", " skipped").replace("skipped ", "skipped:")
        assert f"{len(broken)} skipped" in said or f"skipped:{len(broken)} bad row(s)" in said, out  # out loud
    else:
        assert code == 2, f"broken rows {broken} accepted:\n{out}"
        assert err.startswith("error:") or "\nerror:" in err, err
        if not skip:
            for number in broken[:20]:
                assert f"{rows_file}: row {number}:" in out + err, f"row {number} not named:\n{out}\n{err}"


@settings(max_examples=12, **SETTINGS)
@given(case=data_files())
def test_data_names_every_bad_row_or_skips_them_out_loud(case, tiny_model):
    text, broken, skip = case
    event(f"{'no' if not broken else 'all' if len(broken) == text.count(chr(10)) else 'some'} bad rows, skip_bad_rows={skip}")
    path = _data_config(tiny_model, text, skip, "data")
    code, out, err = cli("data", str(path))
    _assert_outcome(code, out, err, broken, skip, text.count("\n"), WORK / "data" / "data.jsonl")


_GOOD = '{"instruction": "q", "output": "a"}\n'


@pytest.mark.slow
@settings(max_examples=3, **SETTINGS)
@given(case=data_files())
@example(case=(_GOOD * 3, [], False))  # trains
@example(case=(_GOOD + '{"instruction": "q", "output": \n' + _GOOD, [2], True))  # trains, skipping the broken line
def test_train_runs_or_names_every_bad_row(case, tiny_model):
    text, broken, skip = case
    event(f"{'no' if not broken else 'all' if len(broken) == text.count(chr(10)) else 'some'} bad rows, skip_bad_rows={skip}")
    path = _data_config(tiny_model, text, skip, "train")
    code, out, err = cli("train", str(path))
    _assert_outcome(code, out, err, broken, skip, text.count("\n"), WORK / "data" / "train.jsonl")
