"""ROUGE/BLEU as LLaMA-Factory reports them: golden values, the rouge_chinese oracle, Chinese and English, <think>."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from finetune.evals.metrics import sample_scores, score, strip_think, words
from tests.support import DATA


def _independent(prediction: str, reference: str) -> dict[str, float]:
    """Written from the definitions, sharing nothing with the implementation but the word split."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = words(prediction), words(reference)

    def f(p: float, r: float) -> float:
        return 2 * p * r / (p + r + 1e-8)

    def rouge_n(n: int) -> float:
        h = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
        r = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
        overlap = len(h & r)
        return f(overlap / len(h) if h else 0.0, overlap / len(r) if r else 0.0)

    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i, a in enumerate(ref, 1):
        for j, b in enumerate(hyp, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a == b else max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    return {
        "rouge-1": round(rouge_n(1) * 100, 4),
        "rouge-2": round(rouge_n(2) * 100, 4),
        "rouge-l": round(f(lcs / len(hyp), lcs / len(ref)) * 100, 4),
        "bleu-4": round(bleu * 100, 4),
    }


GOLDEN = [
    # distinct n-grams count once (rouge_chinese): ROUGE-1 is 4/5, not 5/6
    ("the cat sat on the mat", "the cat is on the mat", {"rouge-1": 80.0, "rouge-2": 60.0, "rouge-l": 83.3333}),
    (
        "今天天气很好，我们去公园散步。",
        "今天天气不错，我们一起去公园散步吧。",
        {"rouge-1": 73.6842, "rouge-2": 35.2941},
    ),
    ("完全无关的句子", "The quick brown fox", {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}),
    ("", "参考答案", {"rouge-1": 0.0, "bleu-4": 0.0}),
]


@pytest.mark.parametrize("prediction, reference, expected", GOLDEN)
def test_golden_values(prediction: str, reference: str, expected: dict[str, float]) -> None:
    got = sample_scores(prediction, reference)
    assert {k: got[k] for k in expected} == expected
    if prediction:
        assert got == _independent(prediction, reference)


def test_chinese_is_scored_on_words_not_zero() -> None:
    got = sample_scores("我喜欢吃苹果", "我喜欢吃香蕉")
    assert 0 < got["rouge-1"] < 100 and got["bleu-4"] > 0  # a whitespace tokenizer would give 0 here


def _pairs(n: int) -> list[tuple[str, str]]:
    """Real outputs from the shared datasets paired with each other and with edited copies."""
    outputs = [
        e["output"][:300]
        for name in ("alpaca_zh_demo.json", "alpaca_en_demo.json")
        for e in json.loads((DATA / name).read_text())[: n // 2]
    ]
    pairs = list(pairwise(outputs))
    pairs += [(o[: len(o) // 2] + " " + o[:20], o) for o in outputs[::5]]
    return [(p, r) for p, r in pairs if p.strip() and r.strip()]


def test_matches_an_independent_implementation_on_real_text() -> None:
    for prediction, reference in _pairs(60):
        assert sample_scores(prediction, reference) == _independent(prediction, reference), (prediction, reference)


def test_matches_rouge_chinese_the_library_llama_factory_uses() -> None:
    import jieba
    from rouge_chinese import Rouge

    for prediction, reference in _pairs(120):
        hyp, ref = " ".join(jieba.cut(prediction)), " ".join(jieba.cut(reference))
        oracle = Rouge().get_scores(hyp, ref)[0]
        ours = sample_scores(prediction, reference)
        assert {k: ours[k] for k in ("rouge-1", "rouge-2", "rouge-l")} == {
            k: round(oracle[k]["f"] * 100, 4) for k in ("rouge-1", "rouge-2", "rouge-l")
        }, (prediction, reference)


def test_mean_of_rounded_samples_with_llama_factory_keys() -> None:
    pairs = [("the cat sat on the mat", "the cat is on the mat"), ("我喜欢吃苹果", "我喜欢吃香蕉")]
    result = score([p for p, _ in pairs], [r for _, r in pairs])
    samples = [sample_scores(p, r) for p, r in pairs]
    assert set(result) == {"predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "predict_bleu-4"}
    assert result["predict_rouge-1"] == round((samples[0]["rouge-1"] + samples[1]["rouge-1"]) / 2, 4)


def test_thoughts_are_stripped_and_reported_both_ways() -> None:
    assert strip_think("<think>\nlet me see</think>\n\n答案是四。") == "答案是四。"
    assert strip_think("let me see</think>答案") == "答案"  # R1 templates open <think> in the prompt
    assert strip_think("no thought here") == "no thought here"
    result = score(["<think>算一下：二加二</think>\n\n答案是四。", "答案是五。"], ["答案是四。", "答案是五。"])
    assert result["predict_rouge-1"] == 100.0
    assert result["predict_rouge-1_with_think"] < 100.0
    assert "predict_rouge-1_with_think" not in score(["答案是四。"], ["答案是四。"])


def _reasoning_pairs(n: int) -> list[tuple[str, str, str, str]]:
    """(prediction, reference, bare prediction, bare label): a DeepSeek-R1-style validation set whose answers
    carry a long thought before a short label, and generations that think differently (or, as R1 templates leave
    it, without the opening tag) before the same or another label."""
    outputs = [e["output"] for e in json.loads((DATA / "alpaca_zh_demo.json").read_text())[:n]]
    labels = [o.split("。")[0][:40] or o[:40] for o in outputs]
    pairs = []
    for i, (output, label) in enumerate(zip(outputs, labels, strict=True)):
        reference = f"<think>\n{output[:400]}\n</think>\n\n{label}"
        answer = label if i % 3 else labels[(i + 1) % len(labels)]  # two in three right
        prediction = (
            f"好的，我想一想。{answer}\n</think>\n\n{answer}" if i % 2 else f"<think>\n嗯。\n</think>\n\n{answer}"
        )
        pairs.append((prediction, reference, answer, label))
    return pairs


def test_reasoning_references_are_stripped_like_predictions() -> None:
    """The bug the issue reports: stripped predictions were scored against references that kept their thoughts
    (a correct short label scored ~5 against a thought-plus-label reference)."""
    pairs = _reasoning_pairs(30)
    result = score([p for p, _, _, _ in pairs], [r for _, r, _, _ in pairs])
    bare = score([a for _, _, a, _ in pairs], [label for _, _, _, label in pairs])
    assert {k: result[k] for k in bare} == bare  # the same as scoring the bare labels
    right = [(p, r) for p, r, a, label in pairs if a == label]
    assert score([p for p, _ in right], [r for _, r in right])["predict_rouge-1"] == 100.0
    assert result["predict_rouge-1"] > 60 > result["predict_rouge-1_with_think"]  # raw pairs: thoughts dominate
    raw = score([p for p, _, _, _ in pairs], [r for _, r, _, _ in pairs])
    assert raw["predict_bleu-4_with_think"] == mean_of_raw(pairs)


def mean_of_raw(pairs: list[tuple[str, str, str, str]]) -> float:
    return round(sum(sample_scores(p, r)["bleu-4"] for p, r, _, _ in pairs) / len(pairs), 4)


def test_a_thought_only_in_the_reference_is_reported_with_think() -> None:
    result = score(["答案是四。"], ["<think>二加二等于四</think>答案是四。"])
    assert result["predict_rouge-1"] == 100.0 and result["predict_rouge-1_with_think"] < 100.0
