"""`tuneforge eval`: the sample MMLU-layout task, the C-Eval / CMMLU / zip layouts, and the scoring rule
(the letter with the highest next-token logit), checked against a plain transformers forward pass."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.plugins.apps.benchmark.benchmark import (
    CHOICES,
    EVAL_TEMPLATES,
    TaskFiles,
    choice_token_ids,
    evaluate,
    parse_task,
    save_results,
    score_table,
    summarize,
)

from .conftest import REPO, run_cli

DEMO = REPO / "data" / "evaluation" / "mmlu_demo"
SUBJECTS = {"arithmetic": "STEM", "geography": "Social Sciences", "literature": "Humanities", "cooking": "Other"}


def test_the_sample_task_is_well_formed():
    mapping = json.loads((DEMO / "mapping.json").read_text())
    assert {s: v["category"] for s, v in mapping.items()} == SUBJECTS
    files = TaskFiles(str(DEMO.parent), "mmlu_demo")
    for subject in SUBJECTS:
        dev, test = files.read(subject, "dev"), files.read(subject, "test")
        assert len(dev) == 5 and len(test) == 6
        for row in dev + test:
            assert row["answer"] in CHOICES and all(row[c] for c in CHOICES)
            assert len({row[c] for c in CHOICES}) == 4, row  # four different options


def test_eval_cli_prints_and_saves_accuracies(tiny_model, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\ntemplate: llama3\ntask: mmlu_demo_test\n"
                      f"task_dir: {DEMO.parent}\nn_shot: 2\nbatch_size: 4\nsave_dir: {tmp_path / 'results'}\n")
    result = run_cli("eval", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "results" / "scores.json").read_text())
    out = result.stdout
    assert f"{'Average':>15}: {scores['average']:.2f}" in out
    for subject, category in SUBJECTS.items():
        assert f"{category:>15}: {scores['categories'][category]:.2f}" in out
        assert f"{subject:>15}: {scores['subjects'][subject]:.2f}" in out
        right, total = scores["counts"][subject]
        assert total == 6 and scores["subjects"][subject] == round(100 * right / 6, 2)
    assert scores["average"] == round(100 * sum(c[0] for c in scores["counts"].values()) / 24, 2)
    predictions = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(predictions) == set(SUBJECTS) and all(len(p) == 6 and set(p.values()) <= set(CHOICES) for p in predictions.values())
    assert (tmp_path / "results" / "results.log").read_text().startswith(f"{'Average':>15}: ")
    again = run_cli("eval", str(config))
    assert again.returncode == 2 and "already holds results.json" in again.stderr


def test_choice_is_the_argmax_of_the_next_token_logits(tiny_model, tmp_path, manager):
    """evaluate() in batches (right padding) picks what an unpadded plain-transformers pass picks."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.plan import prepare
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    prepared = prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3", "task=mmlu_demo_test",
                              f"task_dir={DEMO.parent}", "n_shot=1", "batch_size=4"], manager=manager)
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_model(ctx)
    results = evaluate(ctx, progress=lambda line: None)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    files = TaskFiles(str(DEMO.parent), "mmlu_demo")
    choice_ids = choice_token_ids(ctx.tokenizer)
    for subject in ("arithmetic", "literature"):
        support = files.read(subject, "dev")[:1]
        for index, row in enumerate(files.read(subject, "test")):
            messages = EVAL_TEMPLATES["en"].messages(row, support, subject)
            prompt, answer = ctx.template.encode_oneturn(ctx.tokenizer, messages)
            with torch.no_grad():
                logits = plain(input_ids=torch.tensor([prompt])).logits[0, -1]
            expected = CHOICES[int(torch.argmax(logits[choice_ids]))]
            assert results["predictions"][subject][str(index)] == expected
            assert answer[0] == choice_ids[CHOICES.index(row["answer"])]  # the trained answer token is the scored one


def test_prompts_follow_llamafactory_s_eval_templates():
    row = {"question": "Q?", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "C"}
    shot = {"question": "S?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "A"}
    messages = EVAL_TEMPLATES["en"].messages(row, [shot], "geography")
    assert messages == [
        {"role": "user", "content": "The following are multiple choice questions (with answers) about geography.\n\n"
                                    "S?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q?\nA. a\nB. b\nC. c\nD. d\nAnswer:"},
        {"role": "assistant", "content": "C"},
    ]
    zh = EVAL_TEMPLATES["zh"].messages(row, [], "地理")
    assert zh[0]["content"].startswith("以下是中国关于地理考试的单项选择题") and zh[0]["content"].endswith("\n答案：")


def _write(path, rows, header=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def test_c_eval_cmmlu_and_zip_layouts_read_the_same_rows(tmp_path):
    demo = TaskFiles(str(DEMO.parent), "mmlu_demo")
    mapping = (DEMO / "mapping.json").read_text()
    # C-Eval: header id,question,A-D,answer,explanation; dev/ and val/ folders with _dev/_val suffixes
    ceval = tmp_path / "ceval"
    (ceval).mkdir()
    (ceval / "mapping.json").write_text(mapping)
    # CMMLU: header with an unnamed index column and capitalised names; dev/ and test/ with {subject}.csv
    cmmlu = tmp_path / "cmmlu"
    (cmmlu).mkdir()
    (cmmlu / "mapping.json").write_text(mapping)
    for subject in SUBJECTS:
        for split, folder in (("dev", "dev"), ("test", "val")):
            rows = demo.read(subject, split)
            _write(ceval / folder / f"{subject}_{folder}.csv",
                   [[i, r["question"], r["A"], r["B"], r["C"], r["D"], r["answer"], "because"] for i, r in enumerate(rows)],
                   ["id", "question", "A", "B", "C", "D", "answer", "explanation"])
            _write(cmmlu / split / f"{subject}.csv",
                   [[i, r["question"], r["A"], r["B"], r["C"], r["D"], r["answer"]] for i, r in enumerate(rows)],
                   ["", "Question", "A", "B", "C", "D", "Answer"])
    # LLaMA-Factory's shipping form: {task_dir}/mmlu/mmlu.zip (+ mapping.json beside it)
    zipped = tmp_path / "zipped" / "mmluz"
    zipped.mkdir(parents=True)
    shutil.copy(DEMO / "mapping.json", zipped / "mapping.json")
    with zipfile.ZipFile(zipped / "mmluz.zip", "w") as archive:
        for path in (DEMO / "data").rglob("*.csv"):
            archive.write(path, f"data/{path.relative_to(DEMO / 'data').as_posix()}")
    for subject in SUBJECTS:
        expected = demo.read(subject, "test")
        assert TaskFiles(str(tmp_path), "ceval").read(subject, "validation") == expected
        assert TaskFiles(str(tmp_path), "cmmlu").read(subject, "test") == expected
        assert TaskFiles(str(tmp_path / "zipped"), "mmluz").read(subject, "test") == expected
        assert TaskFiles(str(tmp_path), "cmmlu").read(subject, "dev") == demo.read(subject, "dev")


def test_clear_errors(tmp_path):
    with pytest.raises(TuneforgeError, match="must be <folder>_<split>"):
        parse_task("mmlu")
    assert parse_task("mmlu_demo_test") == ("mmlu_demo", "test") and parse_task("ceval_validation") == ("ceval", "validation")
    with pytest.raises(TuneforgeError, match=r"task folder .*nothing not found.*holds: mmlu_demo"):
        TaskFiles(str(DEMO.parent), "nothing")
    bad = tmp_path / "bad"
    (bad / "test").mkdir(parents=True)
    (bad / "mapping.json").write_text(json.dumps({"s": {"name": "s", "category": "STEM"}}))
    _write(bad / "test" / "s_test.csv", [["Q", "a", "b", "c", "d", "E"]])
    with pytest.raises(TuneforgeError, match=r"row 1: answer must be one of A, B, C, D, got 'E'"):
        TaskFiles(str(tmp_path), "bad").read("s", "test")
    with pytest.raises(TuneforgeError, match="no dev file for subject 's'"):
        TaskFiles(str(tmp_path), "bad").read("s", "dev")


def test_accuracy_per_subject_category_and_overall(tmp_path):
    class Config:
        n_shot, lang = 0, "en"

    mapping = {"a": {"category": "STEM"}, "b": {"category": "STEM"}, "c": {"category": "Other"}}
    correct = {"a": [True, False], "b": [True, True, True, False], "c": [False]}
    results = summarize("t_test", "test", Config, mapping, {"a": {}, "b": {}, "c": {}}, correct)
    assert results["subjects"] == {"a": 50.0, "b": 75.0, "c": 0.0}
    assert results["categories"] == {"Other": 0.0, "STEM": 66.67}
    assert results["average"] == round(100 * 4 / 7, 2)
    table = score_table(results)
    assert table.splitlines()[0] == "        Average: 57.14" and "              b: 75.00  (3/4)" in table
    written = save_results(results, str(tmp_path / "r"))
    assert [p.name for p in written] == ["results.json", "results.log", "scores.json"]
    assert (tmp_path / "r" / "results.log").read_text().strip() == table.strip()
