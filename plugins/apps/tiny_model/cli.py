"""`tuneforge tiny-model OUT`: a deterministic random-initialised model for tests and the quickstart."""

from __future__ import annotations

from tuneforge import CommandSpec, hookimpl

FAMILIES = ("llama3", "qwen2", "qwen3", "mistral", "gemma", "qwen2_vl", "qwen3_vl", "gemma3", "intern_vl", "llava", "llava_next", "llava_next_llama3", "llava_next_yi", "qwen2_audio", "qwen2_omni")  # builder: FAMILIES + VISION_ + AUDIO_FAMILIES
SIZES = ("tiny", "small")


def register(parser):
    parser.add_argument("out", help="folder to write")
    parser.add_argument("--family", choices=FAMILIES, default="llama3")
    parser.add_argument("--size", choices=SIZES, default="tiny", help="tiny: 1-5M parameters; small: 20-40M")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from tuneforge.plugins.apps.tiny_model.builder import build_tiny_model

    path = build_tiny_model(args.out, family=args.family, size=args.size, seed=args.seed)
    print(f"wrote a {args.size} {args.family} model to {path}")
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="tiny-model", description="build a tiny random model with a trained BPE tokenizer, offline",
                        register=register, run=run)]
