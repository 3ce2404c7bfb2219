"""sft: supervised fine-tuning on conversations; prompts are masked out of the loss."""

from __future__ import annotations

from tuneforge import StageSpec, hookimpl


def validate(config) -> list[str]:
    from tuneforge.train.checks import evaluation_problems

    return evaluation_problems(config)


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    return run_text_stage(ctx, "supervised")


@hookimpl
def tuneforge_stages():
    return [StageSpec(name="sft", description="Supervised fine-tuning: learn the responses of conversations.", run=run, validate=validate, data_kind="supervised")]
