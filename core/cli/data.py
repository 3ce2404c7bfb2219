"""`tuneforge data CONFIG [key=value ...]` (or `tuneforge data preview CONFIG`): the data doctor.

Validates every row, prints counts per dataset, token-length statistics and one rendered example
with the trained tokens marked, before any training. Loads the tokenizer only, never the model.
"""

from __future__ import annotations

import argparse
import sys


def register(sub, name):
    p = sub.add_parser(name, help="check the data: bad rows, token lengths, a rendered example with trained tokens marked")
    p.add_argument("config", help="YAML config (LLaMA-Factory's keys); `preview CONFIG` works too")
    p.add_argument("more", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="mark trained tokens in colour (auto: when stdout is a terminal) instead of [[...]]")
    p.set_defaults(handler=run)


def run(args) -> int:
    config, overrides = args.config, list(args.overrides)
    if args.more is not None:
        if config == "preview" and "=" not in args.more:
            config = args.more
        else:  # argparse took the first key=value as the optional positional
            overrides.insert(0, args.more)

    from ..plan import prepare
    from ..train.context import RunContext
    from ..train.model import load_tokenizer

    prepared = prepare(config, overrides, blocked=args.disable_plugin)
    for warning in prepared.warnings:
        print(f"warning: {warning}")
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    from ..data.doctor import run_doctor

    return run_doctor(ctx, prepared.plan.stage.spec.data_kind, color=color)
