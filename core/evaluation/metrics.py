"""BLEU-4 and ROUGE-1/2/L of generated text against references, computed as LLaMA-Factory does.

Per pair: both texts are segmented with jieba (Chinese words; other text splits on spaces and
punctuation) for ROUGE (rouge-chinese's F scores); BLEU-4 is NLTK's ``sentence_bleu`` over
characters with smoothing method 3. Scores are x100, rounded to 4 places per pair, then averaged.
"""

from __future__ import annotations

from ..specs import Requirement

REQUIREMENTS = (
    Requirement("jieba", "pip install jieba"),
    Requirement("nltk", "pip install nltk"),
    Requirement("rouge_chinese", "pip install rouge-chinese"),
)
INSTALL = "pip install 'tuneforge[metrics]'"


def missing_requirements() -> list[str]:
    return [r.module for r in REQUIREMENTS if r.missing()]


def require_metrics() -> None:
    missing = missing_requirements()
    if missing:
        from ..errors import TuneforgeError

        raise TuneforgeError(f"BLEU/ROUGE need {', '.join(missing)}: {INSTALL}")


def score_pair(predict: str, label: str) -> dict[str, float]:
    """``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}`` of one prediction (x100)."""
    import logging

    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)
    hypothesis = list(jieba.cut(predict))
    reference = list(jieba.cut(label))
    scores = {}
    if not " ".join(hypothesis).split() or not " ".join(reference).split():
        scores.update({"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0})
    else:
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        scores.update({name: round(value["f"] * 100, 4) for name, value in result.items()})
    bleu = sentence_bleu([list(label)], list(predict), smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = round(bleu * 100, 4)
    return scores


def similarity(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """The mean of each score over all pairs: ``{"bleu-4", "rouge-1", "rouge-2", "rouge-l"}``."""
    require_metrics()
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    totals = {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    for predict, label in zip(predictions, labels):
        for name, value in score_pair(predict, label).items():
            totals[name] += value
    count = max(len(labels), 1)
    return {name: total / count for name, total in totals.items()}
