"""Evaluate a model: generated predictions with BLEU/ROUGE (predict) and multiple-choice benchmarks (eval)."""
