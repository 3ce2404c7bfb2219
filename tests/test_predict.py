"""Predictions with BLEU/ROUGE (LLaMA-Factory's do_predict + predict_with_generate): `run_predict`
called directly, through a tiny wrapper like the one the sft stage uses, and after training."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jieba")
pytest.importorskip("nltk")
pytest.importorskip("rouge_chinese")

from tuneforge.errors import DataError, TuneforgeError  # noqa: E402
from tuneforge.evaluation.metrics import score_pair, similarity  # noqa: E402
from tuneforge.evaluation.predict import run_predict  # noqa: E402
from tuneforge.plan import prepare  # noqa: E402
from tuneforge.train.context import RunContext  # noqa: E402

ROWS = [
    {"instruction": "What is 2 plus 3?", "input": "", "output": "2 plus 3 is 5."},
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French:", "input": "good morning", "output": "bonjour"},
    {"instruction": "用一句话介绍北京。", "input": "", "output": "北京是中国的首都。"},
    {"instruction": "Say hello", "input": "", "output": "Hello!"},
]
METRICS = {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_runtime",
           "predict_samples_per_second", "predict_steps_per_second"}


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "qa.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.json"}}))
    return tmp_path


def predict_context(tiny_model, dataset_dir, tmp_path, manager, **overrides) -> RunContext:
    """What `tuneforge predict` would be: a planned inference context over eval_dataset."""
    values = dict(model_name_or_path=str(tiny_model), template="llama3", eval_dataset="qa", dataset_dir=str(dataset_dir),
                  output_dir=str(tmp_path / "out"), do_sample=False, max_new_tokens=12, per_device_eval_batch_size=2)
    values.update(overrides)
    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=manager, inference=True)
    return RunContext(prepared.config, prepared.plan, prepared.manager, training=False)


def test_scores_are_llamafactory_s():
    assert score_pair("今天天气很好", "今天天气很好") == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}
    assert score_pair("abc", "xyz") == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": score_pair("abc", "xyz")["bleu-4"]}
    assert score_pair("abc", "xyz")["bleu-4"] < 10
    assert score_pair("", "something")["rouge-1"] == 0.0
    # ROUGE counts jieba words, not characters: 我/爱/北京/天安门 vs 我/爱/北京 -> P 3/4, R 3/3, F1 6/7
    assert score_pair("我爱北京天安门", "我爱北京")["rouge-1"] == round(6 / 7 * 100, 4)
    # BLEU-4 counts characters (NLTK sentence_bleu, smoothing method 3)
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    expected = round(sentence_bleu([list("the cat is on the mat")], list("the cat sat on the mat"),
                                   smoothing_function=SmoothingFunction().method3) * 100, 4)
    assert score_pair("the cat sat on the mat", "the cat is on the mat")["bleu-4"] == expected
    means = similarity(["今天天气很好", "abc"], ["今天天气很好", "xyz"])
    assert means["rouge-1"] == 50.0 and set(means) == {"bleu-4", "rouge-1", "rouge-2", "rouge-l"}


def test_run_predict_writes_predictions_and_metrics(tiny_model, dataset_dir, tmp_path, manager):
    ctx = predict_context(tiny_model, dataset_dir, tmp_path, manager)
    metrics = run_predict(ctx)
    out = tmp_path / "out"
    assert set(metrics) == METRICS
    assert all(0 <= metrics[k] <= 100 for k in METRICS if "rouge" in k or "bleu" in k)
    assert json.loads((out / "predict_results.json").read_text()) == metrics
    assert json.loads((out / "all_results.json").read_text()) == metrics
    lines = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["label"] for line in lines] == [r["output"] for r in ROWS]
    assert all(list(line) == ["prompt", "predict", "label"] for line in lines)
    assert lines[2]["prompt"].startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTranslate to French:\ngood morning")
    assert lines[2]["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # left-padded batches (of 2, over prompts of different lengths) give what one-by-one generation gives
    engine_ctx = predict_context(tiny_model, dataset_dir, tmp_path, manager)
    from tuneforge.chat.engine import create_engine

    engine = create_engine(engine_ctx)
    singles = [engine.generate([{"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()}])[0].text for r in ROWS]
    assert [line["predict"] for line in lines] == singles
    # the scores are those of the written pairs
    scores = similarity([line["predict"] for line in lines], [line["label"] for line in lines])
    assert all(abs(metrics[f"predict_{k}"] - v) < 1e-9 for k, v in scores.items())


def test_run_predict_after_training_uses_the_trained_model(tiny_model, dataset_dir, tmp_path, manager, monkeypatch):
    """The sft stage's hand-off: ctx holds the trained model; no second load; the output_dir gets
    the predictions beside the training results."""
    from tuneforge.train import model as model_module
    from tuneforge.train.pipeline import run_training

    values = dict(model_name_or_path=str(tiny_model), template="llama3", dataset="qa", eval_dataset="qa",
                  dataset_dir=str(dataset_dir), output_dir=str(tmp_path / "out"), finetuning_type="lora", lora_rank=4,
                  max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, report_to="none", disable_tqdm=True,
                  overwrite_output_dir=True, save_strategy='"no"', do_sample=False, max_new_tokens=8, max_samples=3)
    ctx = run_training(prepare(None, [f"{k}={v}" for k, v in values.items()], manager=manager))
    loads = []
    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: loads.append(a))
    trained = ctx.model
    metrics = run_predict(ctx, ctx.plan.eval_datasets)
    assert loads == [] and ctx.model is trained
    assert set(metrics) == METRICS
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert "train_loss" in results and "predict_bleu-4" in results
    assert len((tmp_path / "out" / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 3


def test_run_predict_says_what_is_missing(tiny_model, dataset_dir, tmp_path, manager, monkeypatch):
    ctx = predict_context(tiny_model, dataset_dir, tmp_path, manager, eval_dataset="")
    with pytest.raises(DataError, match="set eval_dataset"):
        run_predict(ctx)
    from tuneforge.evaluation import metrics
    from tuneforge.specs import Requirement

    monkeypatch.setattr(metrics, "REQUIREMENTS", (Requirement("no_such_module_xyz", "pip install no-such"),))
    ctx = predict_context(tiny_model, dataset_dir, tmp_path, manager)
    with pytest.raises(TuneforgeError, match=r"no_such_module_xyz: pip install 'tuneforge\[metrics\]'"):
        run_predict(ctx)


def test_sft_stage_predicts_after_training_when_asked(tiny_model, tmp_path):
    """do_predict + predict_with_generate in a train config writes LLaMA-Factory's predict files."""
    import json

    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.pipeline import run_training

    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in ("yes", "no", "maybe", "hello")]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json"}}))
    out = tmp_path / "out"
    overrides = [f"model_name_or_path={tiny_model}", "template=llama3", "dataset=d", "eval_dataset=d",
                 f"dataset_dir={tmp_path}", f"output_dir={out}", "finetuning_type=lora", "max_steps=2",
                 "per_device_train_batch_size=2", "do_predict=true", "predict_with_generate=true",
                 "max_new_tokens=4", "do_sample=false", "report_to=none", "disable_tqdm=true", "overwrite_output_dir=true"]
    ctx = run_training(prepare(None, overrides, manager=PluginManager(autoload=False)))
    lines = (out / "generated_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"prompt", "predict", "label"} <= set(json.loads(lines[0]))
    assert "predict_bleu-4" in json.loads((out / "predict_results.json").read_text())
    assert "predict_rouge-l" in ctx.metrics


def test_llamafactory_predict_config_runs_without_a_training_dataset(tiny_model, tmp_path):
    """LLaMA-Factory's predict example: stage sft, do_predict, eval_dataset only (no dataset, no training)."""
    import json

    from .conftest import run_cli

    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w}."} for w in ("yes", "no", "maybe")]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json"}}))
    out = tmp_path / "predict"
    (tmp_path / "predict.yaml").write_text("\n".join([
        f"model_name_or_path: {tiny_model}", "trust_remote_code: true", "stage: sft", "do_predict: true",
        "finetuning_type: lora", "eval_dataset: d", f"dataset_dir: {tmp_path}", "template: llama3", "cutoff_len: 2048",
        "max_samples: 50", "overwrite_cache: true", "preprocessing_num_workers: 16", f"output_dir: {out}",
        "overwrite_output_dir: true", "report_to: none", "per_device_eval_batch_size: 1", "predict_with_generate: true",
        "ddp_timeout: 180000000", "max_new_tokens: 4", "",
    ]))
    result = run_cli("train", str(tmp_path / "predict.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((out / "generated_predictions.jsonl").read_text().splitlines()) == 3
    assert "predict_bleu-4" in json.loads((out / "predict_results.json").read_text())
    assert not (out / "adapter_model.safetensors").exists()  # nothing was trained
