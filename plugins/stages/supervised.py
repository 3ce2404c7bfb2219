"""sft: supervised fine-tuning on conversations; prompts are masked out of the loss."""

from __future__ import annotations

from tuneforge import ConfigKey, StageSpec, hookimpl
from tuneforge.ranks import is_main_process

#: LLaMA-Factory's SFT loss variants (plugins/stages/_sft_losses.py says what each computes).
KEYS = (
    ConfigKey("use_dft_loss", bool, False,
              "DFT: weight each target token's loss by the model's own (detached) probability of it."),
    ConfigKey("use_eaft_loss", bool, False,
              "EAFT: weight each target token's loss by the normalised entropy of the model's top-20 prediction."),
    ConfigKey("eaft_alpha", float, 1.0, "EAFT: power applied to the entropy weight."),
    ConfigKey("use_asft_loss", bool, False,
              "ASFT: DFT plus asft_alpha x KL to the model as training started (a frozen reference)."),
    ConfigKey("asft_alpha", float, 0.1, "ASFT: weight of the KL anchor to the reference model."),
)


def validate(config, plan) -> list[str]:
    from tuneforge.train.checks import evaluation_problems

    problems = evaluation_problems(config)
    chosen = [k for k in ("use_dft_loss", "use_eaft_loss", "use_asft_loss") if config.get(k)]
    if len(chosen) > 1:
        problems.append(f"{' and '.join(chosen)} are different SFT losses: choose one")
    if config.get("compute_accuracy") and config.get("predict_with_generate"):
        problems.append("compute_accuracy scores teacher-forced token predictions; it cannot be combined with "
                        "predict_with_generate (which generates text): drop one")
    for key in ("eaft_alpha", "asft_alpha"):
        value = config.get(key)
        if value is not None and value < 0:
            problems.append(f"{key} must not be negative, got {value}")
    return problems


def token_accuracy(eval_pred) -> dict:
    """compute_accuracy: per row, the share of target tokens whose greedy prediction is the target;
    averaged over rows, as LLaMA-Factory's ComputeAccuracy does."""
    import numpy as np

    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds = preds[0] if isinstance(preds, tuple) else preds
    scores = []
    for pred, label in zip(preds, labels):
        pred, label = pred[:-1], label[1:]
        mask = label != -100
        if mask.any():
            scores.append(float(np.mean(pred[mask] == label[mask])))
    return {"accuracy": float(np.mean(scores)) if scores else 0.0}


def greedy_tokens(logits, labels):
    """Keep only the argmax of the logits for compute_accuracy: evaluation never holds full logits."""
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    return logits.argmax(dim=-1)


def _trainer_extras(ctx) -> dict:
    """Trainer arguments for compute_accuracy and the SFT loss variants."""
    out = {}
    if ctx.config.compute_accuracy:
        out.update(compute_metrics=token_accuracy, preprocess_logits_for_metrics=greedy_tokens)
    return out | _loss_variant(ctx)


def _loss_variant(ctx) -> dict:
    """Trainer arguments for use_dft_loss / use_eaft_loss / use_asft_loss; {} for the model's own loss."""
    from ._sft_losses import asft_trainer_class, compute_loss_func, frozen_reference, selected

    kind = selected(ctx.config)
    if kind is None:
        return {}
    shared: dict = {}
    out = {"compute_loss_func": compute_loss_func(ctx, shared)}
    if kind == "asft":
        from transformers import Trainer

        base = asft_trainer_class(Trainer)
        base.tuneforge_loss_ref = shared
        base.tuneforge_ref_model = frozen_reference(ctx.model)
        out["base"] = base
    if is_main_process():
        print(f"sft loss: {kind.upper()} (use_{kind}_loss)")
    return out


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    config = ctx.config
    # LLaMA-Factory's predict configs: do_predict on eval_dataset, no dataset to train on (and no do_train).
    predict_only = config.do_predict and config.predict_with_generate and not ctx.plan.datasets and not config.do_train
    metrics = {} if predict_only else run_text_stage(ctx, "supervised", **_trainer_extras(ctx))
    if ctx.config.do_predict and ctx.config.predict_with_generate:
        from tuneforge.evaluation.predict import run_predict

        if is_main_process():
            metrics.update(run_predict(ctx, ctx.plan.eval_datasets or ctx.plan.datasets))
    return metrics


@hookimpl
def tuneforge_stages():
    return [StageSpec(name="sft", description="Supervised fine-tuning: learn the responses of conversations.", run=run, validate=validate, data_kind="supervised", keys=KEYS, takes_media=True)]
