"""pt: continued pre-training on plain text, concatenated and cut into cutoff_len blocks."""

from __future__ import annotations

from tuneforge import StageSpec, hookimpl


def validate(config, plan) -> list[str]:
    from tuneforge.train.checks import evaluation_problems

    return evaluation_problems(config)


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    return run_text_stage(ctx, "text")


@hookimpl
def tuneforge_stages():
    return [StageSpec(name="pt", description="Pre-training: next-token prediction on every token of plain text.", run=run, validate=validate, data_kind="text")]
