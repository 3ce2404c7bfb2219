"""sft: supervised fine-tuning on conversations; prompts are masked out of the loss."""

from __future__ import annotations

from tuneforge import StageSpec, hookimpl
from tuneforge.ranks import is_main_process


def validate(config, plan) -> list[str]:
    from tuneforge.train.checks import evaluation_problems

    return evaluation_problems(config)


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    config = ctx.config
    # LLaMA-Factory's predict configs: do_predict on eval_dataset, no dataset to train on (and no do_train).
    predict_only = config.do_predict and config.predict_with_generate and not ctx.plan.datasets and not config.do_train
    metrics = {} if predict_only else run_text_stage(ctx, "supervised")
    if ctx.config.do_predict and ctx.config.predict_with_generate:
        from tuneforge.evaluation.predict import run_predict

        if is_main_process():
            metrics.update(run_predict(ctx, ctx.plan.eval_datasets or ctx.plan.datasets))
    return metrics


@hookimpl
def tuneforge_stages():
    return [StageSpec(name="sft", description="Supervised fine-tuning: learn the responses of conversations.", run=run, validate=validate, data_kind="supervised")]
