"""sft: supervised fine-tuning on conversations; prompts are masked out of the loss."""

from __future__ import annotations

from tuneforge import StageSpec, hookimpl


def featurize(ctx, examples):
    from tuneforge.data.tokenize import supervised_features

    config = ctx.config
    return supervised_features(
        examples, ctx.template, ctx.tokenizer,
        cutoff_len=config.cutoff_len, train_on_prompt=config.train_on_prompt, default_system=config.default_system,
    )


def run(ctx):
    from tuneforge.train.text_stage import run_text_stage

    return run_text_stage(ctx, featurize)


@hookimpl
def tuneforge_stages():
    return [StageSpec(name="sft", description="Supervised fine-tuning: learn the responses of conversations.", run=run, data_kind="supervised")]
