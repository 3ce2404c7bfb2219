"""`tuneforge tiny-model OUT`: a deterministic random-initialised model for tests and the quickstart."""

from __future__ import annotations

FAMILIES = ("llama3", "qwen2", "qwen3", "mistral", "gemma")
SIZES = ("tiny", "small")


def register(sub, name):
    p = sub.add_parser(name, help="build a tiny random model with a trained BPE tokenizer, offline")
    p.add_argument("out", help="folder to write")
    p.add_argument("--family", choices=FAMILIES, default="llama3")
    p.add_argument("--size", choices=SIZES, default="tiny", help="tiny: 1-5M parameters; small: 20-40M")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run)


def run(args) -> int:
    from tuneforge.plugins.apps.tiny_model.builder import build_tiny_model

    path = build_tiny_model(args.out, family=args.family, size=args.size, seed=args.seed)
    print(f"wrote a {args.size} {args.family} model to {path}")
    return 0
