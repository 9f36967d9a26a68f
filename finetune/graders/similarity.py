"""``string_check`` and ``text_similarity``: pure functions of two strings.

string_check (OpenAI's semantics, 1.0 or 0.0): ``eq`` equal, ``ne`` not equal, ``like`` the input contains the
reference, ``ilike`` the same ignoring case.

text_similarity, each a score in [0, 1] (cosine: [-1, 1]) from a well-kept library:

- ``rouge_1`` … ``rouge_5``, ``rouge_l``: rouge-score's n-gram/LCS F-measure on jieba words with LLaMA-Factory's
  conventions (``finetune.evals.metrics``: the ROUGE the tutorials report, Chinese-aware);
- ``bleu``: NLTK BLEU-4 on characters, smoothing method 3 (LLaMA-Factory's ``predict_bleu-4`` / 100);
- ``gleu``: NLTK ``sentence_gleu`` on the same jieba words;
- ``meteor``: NLTK ``single_meteor_score`` on those words (exact and Porter-stem matches; WordNet synonyms only when
  NLTK's WordNet corpus is installed — it is not downloaded at run time);
- ``fuzzy_match``: rapidfuzz ``fuzz.ratio`` / 100 (normalized Indel similarity of the two strings);
- ``cosine``: cosine similarity of the two texts' all-MiniLM-L6-v2 sentence embeddings (``embeddings.Embedder``).

``<think>…</think>`` is stripped from both texts first (reasoning models), as in the job-end metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

from finetune.evals.metrics import bleu4, rouge_l, rouge_n, strip_think, words

OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = (
    "cosine",
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
Embed = Callable[[Sequence[str]], list[list[float]]]


def string_check(operation: str, text: str, reference: str) -> float:
    if operation == "eq":
        return float(text == reference)
    if operation == "ne":
        return float(text != reference)
    if operation == "like":
        return float(reference in text)
    if operation == "ilike":
        return float(reference.casefold() in text.casefold())
    raise ValueError(f"unknown string_check operation {operation!r}")


def _tokens(text: str) -> list[str]:
    return [w for w in words(text) if w.strip()]


class _NoWordNet:
    """METEOR's synonym stage without the WordNet corpus: no synonyms (exact and stem matches still count)."""

    @staticmethod
    def synsets(*_: object, **__: object) -> list:
        return []


@cache
def _wordnet() -> object:
    import nltk
    from nltk.corpus import wordnet

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        return _NoWordNet()
    return wordnet


def _lexical(metric: str, text: str, reference: str) -> float:
    if metric == "bleu":
        return bleu4(text, reference)
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100.0
    hyp, ref = _tokens(text), _tokens(reference)
    if not hyp or not ref:
        return 0.0
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return sentence_gleu([ref], hyp)
    if metric == "meteor":
        from nltk.translate.meteor_score import single_meteor_score

        return single_meteor_score(ref, hyp, wordnet=_wordnet())
    if metric == "rouge_l":
        return rouge_l(words(text), words(reference))
    if metric in METRICS and metric.startswith("rouge_"):
        return rouge_n(words(text), words(reference), int(metric[-1]))
    raise ValueError(f"unknown evaluation_metric {metric!r}")


def text_similarity(metric: str, pairs: Sequence[tuple[str, str]], embed: Embed | None = None) -> list[float]:
    """Scores of (text, reference) pairs; ``cosine`` embeds all the texts of the batch at once."""
    bare = [(strip_think(t), strip_think(r)) for t, r in pairs]
    if metric != "cosine":
        return [_lexical(metric, t, r) for t, r in bare]
    if embed is None:
        raise ValueError("cosine similarity needs an embedding model")
    vectors = embed([t for pair in bare for t in pair])
    return [_cosine(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(bare))]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else 0.0
