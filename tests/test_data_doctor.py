"""`tuneforge data CONFIG`: counts, token-length statistics and a rendered example with trained tokens marked."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tuneforge.data.doctor import render_marked, run_doctor

from .conftest import ANCHOR, run_cli
from .test_data_pipeline import make_ctx

pytestmark = pytest.mark.usefixtures("private_cache")


def test_data_command_prints_counts_stats_and_a_marked_example(tiny_model, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model), "stage": "sft", "template": "llama3", "dataset": "identity,alpaca_en_demo",
        "dataset_dir": str(ANCHOR), "cutoff_len": 256, "max_samples": 300, "replace_placeholders": {"name": "Greatbot", "author": "Allen"},
    }))
    result = run_cli("data", "preview", str(config), "cutoff_len=512", env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"dataset 'identity' ({ANCHOR / 'identity.json'}, alpaca): 91 rows, all valid" in out
    assert "dataset 'alpaca_en_demo'" in out and "999 rows, all valid, 300 used" in out
    stats = re.search(r"alpaca_en_demo: 300 rows  min (\d+)  median (\d+)  p95 (\d+)  max (\d+)", out)
    assert stats and int(stats[1]) <= int(stats[2]) <= int(stats[3]) <= int(stats[4]), out
    truncated = re.search(r"alpaca_en_demo: .*\n    truncated by cutoff_len: (\d+) ", out)
    assert truncated and int(truncated[1]) > 0  # cutoff_len=512 (the override) cuts some demo rows
    assert "cutoff_len 512" in out
    # the example: the prompt plain, the trained reply (with its end-of-turn token) marked
    assert ("user<|end_header_id|>\n\nhi<|eot_id|>" in out and
            "[[Hello! I am Greatbot, an AI assistant developed by Allen. How can I assist you today?<|eot_id|>]]" in out), out
    assert "result: OK" in out


def test_data_command_lists_bad_rows_and_exits_2(tiny_model, tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}]))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model_name_or_path": str(tiny_model), "template": "llama3",
                                                     "dataset": str(tmp_path / "rows.json")}))
    result = run_cli("data", str(tmp_path / "c.yaml"), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{tmp_path / 'rows.json'}: row 2: output: empty response" in result.stdout
    assert "result: 1 bad row(s): training would stop" in result.stdout


def test_doctor_with_skipped_rows_preference_and_pretraining_data(tiny_model, tmp_path, capsys):
    (tmp_path / "rows.json").write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q", "output": ""}]))
    ctx = make_ctx(tiny_model, tmp_path, dataset=str(tmp_path / "rows.json"), skip_bad_rows=True)
    assert run_doctor(ctx, "supervised") == 0
    assert "result: OK (1 rows ready, 1 bad row(s) skipped)" in capsys.readouterr().out

    ctx = make_ctx(tiny_model, ANCHOR, dataset="dpo_en_demo", max_samples=20, cutoff_len=1024)
    assert run_doctor(ctx, "pairwise") == 0
    out = capsys.readouterr().out
    assert "--- chosen:" in out and "--- rejected:" in out and "[[That sounds like a fun and engaging idea!" in out

    (tmp_path / "corpus.txt").write_text("\n".join(f"sentence number {i} of the corpus" for i in range(50)))
    ctx = make_ctx(tiny_model, tmp_path, dataset=str(tmp_path / "corpus.txt"), stage="pt", cutoff_len=64)
    assert run_doctor(ctx, "text") == 0
    out = capsys.readouterr().out
    assert re.search(r"tokens -> about \d+ training rows of up to 64 tokens \(concatenated and chunked\)", out)


@pytest.mark.parametrize("color", [False, True])
def test_render_marked_wraps_trained_runs(tiny_model, color):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer.encode("ask answer", add_special_tokens=False)
    labels = [-100] * (len(ids) - 1) + ids[-1:]
    text = render_marked(tokenizer, ids, labels, color)
    assert text == ("ask\x1b[1;32m answer\x1b[0m" if color else "ask[[ answer]]")
