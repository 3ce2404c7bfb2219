"""pt: continued pre-training on plain text, concatenated and cut into cutoff_len blocks."""

from __future__ import annotations

from tuneforge import StageSpec, hookimpl


def featurize(ctx, examples):
    from tuneforge.data.tokenize import pretrain_features

    return pretrain_features(examples, ctx.tokenizer, cutoff_len=ctx.config.cutoff_len)


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    return run_text_stage(ctx, featurize)


@hookimpl
def tuneforge_stages():
    return [StageSpec(name="pt", description="Pre-training: next-token prediction on every token of plain text.", run=run, data_kind="text")]
