"""ROUGE-1/2/L and BLEU-4 exactly as LLaMA-Factory reports them (``predict_rouge-1`` …), Chinese-aware.

LLaMA-Factory (``src/llamafactory/train/sft/metric.py``) scores each sample on jieba words with ``rouge_chinese``
and on characters with NLTK BLEU (smoothing method 3), ×100 rounded to 4 decimals, then averages the rounded
values. ``rouge_chinese`` differs from plain ROUGE in two ways we keep, so numbers match what tutorials show:

- ROUGE-N counts each distinct n-gram once (n-gram *sets*): "the cat sat on the mat" vs "the cat is on the mat"
  is ROUGE-1 80.0, not 83.33;
- F = 2PR / (P + R + 1e-8).

Counting and LCS are rouge-score's (fed the jieba words directly); only the set/epsilon conventions are ours.
``<think>…</think>`` is removed from predictions *and* references before scoring (reasoning models: a validation
file's answers carry their thoughts just as the generated ones do; stripping one side only compares a bare label
with a long thought). ``score`` also reports the raw pair's scores with a ``_with_think`` suffix when any
prediction or reference had a thought.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

KEYS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
_THINK = re.compile(r"^\s*(?:<think>)?.*?</think>\s*", re.DOTALL)


def strip_think(text: str) -> str:
    """Drop a leading thought (with or without its opening tag, as R1 templates leave it)."""
    return _THINK.sub("", text, count=1)


@cache
def _jieba():  # noqa: ANN202 - jieba prints to stderr on first use; loaded once
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


# rouge_chinese cuts the jieba-joined text into sentences at these marks, then splits each sentence on " ";
# a blank piece (a line of spaces) yields one empty word there — kept, since it changes the counts.
_SENTENCE_ENDS = [
    (re.compile(r"([。！？\?])([^”’])"), r"\1\n\2"),
    (re.compile(r"(\.{6})([^”’])"), r"\1\n\2"),
    (re.compile(r"(\…{2})([^”’])"), r"\1\n\2"),
    (re.compile(r"([。！？\?][”’])([^，。！？\?])"), r"\1\n\2"),
]


def words(text: str) -> list[str]:
    """The word sequence rouge_chinese scores for ``" ".join(jieba.cut(text))``."""
    joined = " ".join(_jieba().cut(text))
    for pattern, repl in _SENTENCE_ENDS:
        joined = pattern.sub(repl, joined)
    pieces = [" ".join(piece.split()) for piece in joined.rstrip().split("\n") if piece]
    return [w for piece in pieces for w in piece.split(" ")]


def _f(precision: float, recall: float) -> float:
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    from rouge_score import rouge_scorer

    as_set = lambda tokens: Counter(set(rouge_scorer._create_ngrams(tokens, n)))  # noqa: E731
    score = rouge_scorer._score_ngrams(as_set(ref), as_set(hyp))
    return _f(score.precision, score.recall)


def rouge_l(hyp: list[str], ref: list[str]) -> float:
    from rouge_score import rouge_scorer

    score = rouge_scorer._score_lcs(ref, hyp)
    return _f(score.precision, score.recall)


def bleu4(prediction: str, reference: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not prediction:
        return 0.0
    return sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)


def sample_scores(prediction: str, reference: str) -> dict[str, float]:
    """One sample's scores, ×100, rounded to 4 decimals (LLaMA-Factory rounds per sample, then averages)."""
    hyp, ref = words(prediction), words(reference)
    if not " ".join(hyp).split() or not " ".join(ref).split():
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        rouge = {"rouge-1": rouge_n(hyp, ref, 1), "rouge-2": rouge_n(hyp, ref, 2), "rouge-l": rouge_l(hyp, ref)}
    scores = {k: round(v * 100, 4) for k, v in rouge.items()}
    scores["bleu-4"] = round(bleu4(prediction, reference) * 100, 4)
    return scores


def mean_scores(samples: list[dict[str, float]], prefix: str = "predict_") -> dict[str, float]:
    if not samples:
        return {}
    return {f"{prefix}{k}": round(sum(s[k] for s in samples) / len(samples), 4) for k in KEYS}


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """``predict_rouge-1`` … ``predict_bleu-4`` over the pairs, thoughts stripped from both sides (+ ``…_with_think``,
    the raw pairs, if either side had a thought)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    bare_predictions, bare_references = [strip_think(p) for p in predictions], [strip_think(r) for r in references]
    result = mean_scores([sample_scores(p, r) for p, r in zip(bare_predictions, bare_references, strict=True)])
    if bare_predictions != predictions or bare_references != references:
        raw = mean_scores([sample_scores(p, r) for p, r in zip(predictions, references, strict=True)])
        result.update({f"{k}_with_think": v for k, v in raw.items()})
    return result
