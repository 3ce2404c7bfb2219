"""The tiny llama3 test model with a 128,256-token head (Llama-3's vocabulary size), for loss/memory benches.

    python bench/big_vocab_model.py OUT_DIR [--vocab 128256]

The tokenizer stays the tiny one (its ids are all below 2,048), so any text trains; only the embedding
and the LM head grow to the large vocabulary, which is where the logits' memory goes.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--vocab", type=int, default=128_256)
    args = parser.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    source = cached_tiny_model("llama3", "tiny")
    config = AutoConfig.from_pretrained(source)
    config.vocab_size = args.vocab
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(source).save_pretrained(args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {args.vocab:,}")


if __name__ == "__main__":
    main()
