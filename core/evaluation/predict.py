"""Predictions on the eval dataset with BLEU/ROUGE: LLaMA-Factory's ``do_predict`` +
``predict_with_generate``.

:func:`run_predict` renders each conversation's prompt with the run's chat template (the last
assistant turn is the label), generates replies in left-padded batches of
``per_device_eval_batch_size`` through the run's inference engine (``infer_backend``; the
``huggingface`` engine serves the model the run already holds; a row with images goes alone through
the engine's conversation API, which feeds its pixels), and writes to ``output_dir``:

- ``generated_predictions.jsonl``: one ``{"prompt", "predict", "label"}`` object per example;
- ``predict_results.json``: ``predict_bleu-4``, ``predict_rouge-1``, ``predict_rouge-2``,
  ``predict_rouge-l``, ``predict_runtime``, ``predict_samples_per_second``,
  ``predict_steps_per_second`` (also merged into ``all_results.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import DataError


def _label(template, message: dict) -> str:
    if message["role"] == "function":
        return template.render_tool_calls(message["content"])
    return message["content"]


#: The media columns an example may carry (see tuneforge.data.media): predicted one row at a time.
_MEDIA = ("images", "videos", "audios")


def prediction_rows(ctx, dataset_plans, engine=None) -> list[dict]:
    """``{"ids", "label"}`` per example: the prompt ids (at most cutoff_len, keeping the end) and the reference.

    An example with media (images...) also keeps ``prompt``: its prompt messages, the first carrying
    the media files, as the engine takes them; its ids are the engine's (the media tokens expanded),
    never cut (half an image cannot be fed)."""
    from ..data.loading import load_examples

    config, template, tokenizer = ctx.config, ctx.template, ctx.tokenizer
    rows = []
    for result in load_examples(ctx, dataset_plans, "supervised"):
        for example in result.examples:
            messages = example["messages"]
            system = example.get("system") if example.get("system") is not None else config.default_system
            media = {c: example[c] for c in _MEDIA if example.get(c)}
            if media:
                prompt = [dict(m) for m in messages[:-1]]
                prompt[0].update(media)
                ids = _media_engine(engine, media).encode(prompt, system, example.get("tools"))
                rows.append({"ids": ids, "label": _label(template, messages[-1]),
                             "prompt": {"messages": prompt, "system": system, "tools": example.get("tools")}})
                continue
            ids = template.encode_prompt(tokenizer, messages[:-1], system, example.get("tools"), enable_thinking=config.enable_thinking)
            if config.cutoff_len and len(ids) > config.cutoff_len:
                ids = ids[len(ids) - config.cutoff_len :]
            rows.append({"ids": ids, "label": _label(template, messages[-1])})
    return rows


def _media_engine(engine, media: dict):
    """The engine, when it takes these media (its ``media_modalities``); else a DataError."""
    takes = tuple(getattr(engine, "media_modalities", ()) or ()) if engine is not None else ()
    missing = [c for c in media if c not in takes]
    if missing:
        name = getattr(engine, "name", "none")
        raise DataError(f"the eval set has {', '.join(missing)}, but the inference engine '{name}' takes "
                        f"{', '.join(takes) or 'text only'}: predict with infer_backend: huggingface")
    return engine


def _batches(rows: list[dict], size: int) -> list[list[int]]:
    """Row indices in batches of similar prompt length (less padding), longest first."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["ids"]))
    return [order[i : i + size] for i in range(0, len(order), size)]


def run_predict(ctx, dataset_plans=None) -> dict:
    """Generate for every example of ``dataset_plans`` (default: the plan's eval datasets), write
    the predictions and BLEU/ROUGE to ``ctx.output_dir``, and return the ``predict_*`` metrics.

    ``ctx`` holds the model and tokenizer when called at the end of training; otherwise the engine
    loads them as planned. Only the main process writes (under torchrun every rank generates the
    same; call it on rank 0 only to save the work).
    """
    from ..chat.engine import create_engine
    from .metrics import require_metrics, similarity

    plans = ctx.plan.eval_datasets if dataset_plans is None else dataset_plans
    if not plans:
        raise DataError("predictions need a dataset to predict on: set eval_dataset (names from dataset_info.json)")
    require_metrics()
    engine = create_engine(ctx)
    ctx.tokenizer, ctx.template = engine.tokenizer, engine.template
    rows = prediction_rows(ctx, plans, engine)
    if not rows:
        raise DataError("the eval dataset has no examples to predict")
    batch_size = int(ctx.config.get("per_device_eval_batch_size") or 8)
    text = [i for i, row in enumerate(rows) if "prompt" not in row]
    # rows with media: one at a time through the engine's conversation API, which feeds their pixels
    batches = [[text[j] for j in b] for b in _batches([rows[i] for i in text], batch_size)]
    batches += [[i] for i, row in enumerate(rows) if "prompt" in row]
    settings = None
    if ctx.config.eval_num_beams:  # LLaMA-Factory's beam width for predictions only
        from ..chat.engine import GenerationSettings

        settings = GenerationSettings.from_config(ctx.config).updated(num_beams=int(ctx.config.eval_num_beams))
    predictions: list[str] = [""] * len(rows)
    start = time.perf_counter()
    for number, batch in enumerate(batches, 1):
        prompt = rows[batch[0]].get("prompt")
        if prompt is not None:
            responses = engine.generate(prompt["messages"], prompt["system"], prompt["tools"], settings)
        else:
            responses = engine.generate_batch([rows[i]["ids"] for i in batch], settings)
        for index, response in zip(batch, responses):
            predictions[index] = response.text
        print(f"predict: batch {number}/{len(batches)} done", flush=True)
    runtime = time.perf_counter() - start
    labels = [row["label"] for row in rows]
    scores = similarity(predictions, labels)
    metrics = {f"predict_{name}": value for name, value in scores.items()}
    metrics.update(
        predict_runtime=round(runtime, 4),
        predict_samples_per_second=round(len(rows) / runtime, 3) if runtime else 0.0,
        predict_steps_per_second=round(len(batches) / runtime, 3) if runtime else 0.0,
    )
    if ctx.extras.get("is_main_process", True):
        _save(ctx, rows, predictions, metrics)
    return metrics


def _save(ctx, rows, predictions, metrics) -> None:
    out = Path(ctx.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = ctx.tokenizer
    with open(out / "generated_predictions.jsonl", "w", encoding="utf-8") as f:
        for row, predict in zip(rows, predictions):
            prompt = tokenizer.decode(row["ids"], skip_special_tokens=False)
            f.write(json.dumps({"prompt": prompt, "predict": predict, "label": row["label"]}, ensure_ascii=False) + "\n")
    (out / "predict_results.json").write_text(json.dumps(metrics, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    combined = out / "all_results.json"
    merged = json.loads(combined.read_text(encoding="utf-8")) if combined.is_file() else {}
    merged.update(metrics)
    combined.write_text(json.dumps(merged, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    print("***** predict metrics *****")
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        print(f"  {key:<{width}} = {metrics[key]}")
    print(f"predictions written to {out / 'generated_predictions.jsonl'}", flush=True)
