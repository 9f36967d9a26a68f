"""The grader engine against values computed here, independently: a hand count for string_check, NLTK for
BLEU/GLEU/METEOR, rapidfuzz for fuzzy_match, set/LCS counting for ROUGE-N/L, numpy over the model's own
embeddings for cosine; templates, formulas and creation-time validation."""

from __future__ import annotations

import math

import pytest

from finetune.graders import judges
from finetune.graders.engine import GraderEngine, Outcome, passed
from finetune.graders.formula import FormulaError, evaluate, parse
from finetune.graders.templates import problem, render, sample_namespace
from finetune.graders.validate import check
from storage.errors import InvalidRequest, NotFound

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("我喜欢吃苹果", "我喜欢吃香蕉"),
    ("今天天气很好，我们去公园散步。", "今天天气不错，我们一起去公园散步吧。"),
    ("完全无关", "The quick brown fox"),
    ("<think>let me think</think>Paris is the capital.", "<think>France…</think>The capital is Paris."),
]


def _bare(text: str) -> str:
    return text.split("</think>", 1)[1] if "</think>" in text else text


def _no_model(model: str) -> None:
    raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")


def _grade(grader: dict, pairs: list[tuple[str, str]], engine: GraderEngine | None = None) -> list[Outcome]:
    grader = check(grader, "grader", _no_model)
    rows = [(sample_namespace(out), {"ref": ref}) for out, ref in pairs]
    return (engine or GraderEngine()).grade(grader, rows, "org-test")


def _similarity(metric: str, pairs: list[tuple[str, str]] = PAIRS, **kw) -> list[float]:
    grader = {
        "type": "text_similarity",
        "name": metric,
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "evaluation_metric": metric,
        "pass_threshold": 0.5,
    }
    return [o.score for o in _grade(grader, pairs, **kw)]


def _jieba_tokens(text: str) -> list[str]:
    import jieba

    return [w for w in jieba.cut(text) if w.strip()]


def test_string_check_by_hand() -> None:
    cases = [
        ("eq", "Paris", "Paris", 1),
        ("eq", "Paris", "paris", 0),
        ("ne", "Paris", "paris", 1),
        ("ne", "a", "a", 0),
        ("like", "The capital is Paris.", "Paris", 1),
        ("like", "the capital is paris.", "Paris", 0),
        ("ilike", "THE CAPITAL IS PARIS.", "paris", 1),
        ("ilike", "Lyon", "paris", 0),
        ("eq", "", "", 1),
        ("like", "anything", "", 1),
    ]
    for op, text, ref, expected in cases:
        grader = {
            "type": "string_check",
            "name": "s",
            "input": "{{sample.output_text}}",
            "reference": "{{item.ref}}",
            "operation": op,
        }
        [outcome] = _grade(grader, [(text, ref)])
        assert outcome.score == expected, (op, text, ref)
        assert passed(grader, outcome) is bool(expected)


def test_bleu_is_nltk_on_characters() -> None:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    expected = [
        sentence_bleu([list(_bare(r))], list(_bare(o)), smoothing_function=SmoothingFunction().method3)
        for o, r in PAIRS
    ]
    assert _similarity("bleu") == pytest.approx(expected, abs=1e-12)


def test_gleu_and_meteor_are_nltk_on_words() -> None:
    from nltk.translate.gleu_score import sentence_gleu
    from nltk.translate.meteor_score import single_meteor_score

    class NoSynonyms:
        def synsets(self, *_: object, **__: object) -> list:
            return []

    tokens = [(_jieba_tokens(_bare(o)), _jieba_tokens(_bare(r))) for o, r in PAIRS]
    assert _similarity("gleu") == pytest.approx([sentence_gleu([r], h) for h, r in tokens], abs=1e-12)
    assert _similarity("meteor") == pytest.approx(
        [single_meteor_score(r, h, wordnet=NoSynonyms()) for h, r in tokens], abs=1e-12
    )
    assert 0 < _similarity("meteor")[0] < 1


def test_fuzzy_match_is_rapidfuzz_ratio() -> None:
    from rapidfuzz import fuzz

    assert _similarity("fuzzy_match") == pytest.approx([fuzz.ratio(_bare(o), _bare(r)) / 100 for o, r in PAIRS])


def _ngram_f(hyp: list[str], ref: list[str], n: int) -> float:
    h = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
    r = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
    if not h or not r:
        return 0.0
    p, q = len(h & r) / len(h), len(h & r) / len(r)
    return 2 * p * q / (p + q + 1e-8)


def test_rouge_n_and_l_by_counting() -> None:
    """ROUGE-N F on distinct n-grams and ROUGE-L F from an LCS table, over jieba words (rouge_chinese's ROUGE)."""
    for n in range(1, 6):
        expected = [_ngram_f(_jieba_tokens(_bare(o)), _jieba_tokens(_bare(r)), n) for o, r in PAIRS]
        assert _similarity(f"rouge_{n}") == pytest.approx(expected, abs=1e-9), n

    def lcs_f(hyp: list[str], ref: list[str]) -> float:
        table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
        for i, a in enumerate(ref, 1):
            for j, b in enumerate(hyp, 1):
                table[i][j] = table[i - 1][j - 1] + 1 if a == b else max(table[i - 1][j], table[i][j - 1])
        p, q = table[-1][-1] / len(hyp), table[-1][-1] / len(ref)
        return 2 * p * q / (p + q + 1e-8)

    expected = [lcs_f(_jieba_tokens(_bare(o)), _jieba_tokens(_bare(r))) for o, r in PAIRS]
    assert _similarity("rouge_l") == pytest.approx(expected, abs=1e-9)
    assert _similarity("rouge_1")[1] > 0  # Chinese is scored on words, not as one whitespace token


def test_cosine_is_numpy_over_minilm_embeddings() -> None:
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from finetune.graders.embeddings import Embedder, model_dir

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir()), AutoModel.from_pretrained(model_dir())
    texts = [t for o, r in PAIRS for t in (_bare(o), _bare(r))]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None]
    vectors = (hidden * mask).sum(1) / mask.sum(1)
    expected = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(vectors[::2], vectors[1::2], strict=True)
    ]
    embedder = Embedder()
    try:
        got = _similarity("cosine", engine=GraderEngine(embed=embedder))
    finally:
        embedder.close()
    assert got == pytest.approx(expected, abs=1e-5)
    assert got[0] > got[3]  # paraphrases are closer than unrelated text


def test_templates_and_sample_namespace() -> None:
    sample = sample_namespace('{"city": "Paris", "n": [1, 2]}', tool_calls=[{"function": {"name": "f"}}])
    ns = {"item": {"q": {"tags": ["a", "b"]}, "x": 3}, "sample": sample}
    assert render("{{ item.q.tags[1] }}/{{item.q.tags.0}} {{item.x}} {{sample.output_json.city}}", ns) == "b/a 3 Paris"
    assert render("{{sample.output_json.n}} {{sample.output_tools[0].function.name}}", ns) == "[1, 2] f"
    assert "output_json" not in sample_namespace("not json")
    assert problem("{{items.x}}") and "does not exist" in problem("{{ output.text }}")
    assert problem("{{item.a b}}") and problem("{{sample.output_text}} {{item.a}}") is None
    grader = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_json.city}}",
        "reference": "{{item.c}}",
        "operation": "eq",
    }
    done = GraderEngine().grade(
        check(grader, "g", _no_model), [(sample, {"c": "Paris"}), (sample_namespace("plain"), {"c": "Paris"})], "o"
    )
    assert done[0].score == 1.0 and done[1].score is None and done[1].kind == "invalid_variable_error"


def test_formula_is_evaluated_safely() -> None:
    tree = parse(
        "0.25 * a + 0.75 * max(b, 0.5) - sqrt(abs(-4)) / 2 + log(exp(1)) + floor(1.7) + ceil(0.2) ** 2", ["a", "b"]
    )
    assert evaluate(tree, {"a": 1.0, "b": 0.0}) == pytest.approx(0.25 + 0.375 - 1 + 1 + 1 + 1)
    for bad in (
        "__import__('os').system('true')",
        "a.__class__",
        "open('x')",
        "(1",
        "c + 1",
        "[a]",
        "a if b else 1",
        "lambda: 1",
        "'x' * 3",
        "max(a, key=b)",
    ):
        with pytest.raises(FormulaError):
            parse(bad, ["a", "b"])
    for bad in ("a / 0", "9.0 ** 9 ** 9", "log(0)", "sqrt(-1)"):
        with pytest.raises(FormulaError):
            evaluate(parse(bad, ["a"]), {"a": 1.0})


def test_multi_combines_sub_graders_by_formula() -> None:
    from rapidfuzz import fuzz

    grader = {
        "type": "multi",
        "name": "m",
        "calculate_output": "0.5 * exact + 0.5 * fuzzy",
        "graders": {
            "exact": {
                "type": "string_check",
                "name": "e",
                "input": "{{sample.output_text}}",
                "reference": "{{item.ref}}",
                "operation": "eq",
            },
            "fuzzy": {
                "type": "text_similarity",
                "name": "f",
                "input": "{{sample.output_text}}",
                "reference": "{{item.ref}}",
                "evaluation_metric": "fuzzy_match",
            },
        },
    }
    outcomes = _grade(grader, [("hello", "hello"), ("help", "hello")])
    assert outcomes[0].score == 1.0
    assert outcomes[1].score == pytest.approx(0.5 * fuzz.ratio("help", "hello") / 100)
    assert outcomes[1].sub == {"exact": 0.0, "fuzzy": pytest.approx(fuzz.ratio("help", "hello") / 100)}
    as_list = dict(grader, graders=list(grader["graders"].values()), calculate_output="e + f")
    assert _grade(as_list, [("hello", "hello")])[0].score == 2.0


def test_judge_answers_are_parsed_into_the_range() -> None:
    grader = {"type": "score_model", "name": "s", "model": "m", "input": [], "range": [0, 10]}
    assert judges.parse_score('{"result": 7.5}', grader) == 7.5
    assert judges.parse_score('{"result": 42}', grader) == 10.0
    assert judges.parse_score("I would say 3 out of 10", grader) == 3.0
    with pytest.raises(judges.ParseError):
        judges.parse_score("no idea", grader)
    labels = {"type": "label_model", "labels": ["positive", "negative"], "passing_labels": ["positive"]}
    assert judges.parse_label('{"result": "negative"}', labels) == "negative"
    assert judges.parse_label("Positive.", labels) == "positive"
    with pytest.raises(judges.ParseError):
        judges.parse_label("neutral", labels)
    body = judges.request(
        dict(grader, sampling_params={"max_completions_tokens": 9, "seed": 3}), [{"role": "user", "content": "x"}]
    )
    assert body["max_tokens"] == 9 and body["seed"] == 3 and body["temperature"] == 0
    assert body["response_format"]["json_schema"]["schema"]["properties"]["result"] == {"type": "number"}


BAD = [  # (grader, the param the 400 names)
    ({"type": "string_check", "name": "s", "input": "x", "reference": "y", "operation": "contains"}, "g.operation"),
    (
        {"type": "text_similarity", "name": "t", "input": "x", "reference": "y", "evaluation_metric": "wer"},
        "g.evaluation_metric",
    ),
    ({"type": "string_check", "name": "s", "input": "{{answer.text}}", "reference": "y", "operation": "eq"}, "g.input"),
    ({"type": "python", "name": "p", "source": "def grade(sample, item):\n    return (1"}, "g.source"),
    ({"type": "python", "name": "p", "source": "def score(sample, item):\n    return 1"}, "g.source"),
    ({"type": "python", "name": "p", "source": "def grade(s, i): return 1", "limits": 3}, "g.limits"),
    (
        {"type": "score_model", "name": "j", "model": "m", "input": [{"role": "user", "content": "{{foo.bar}}"}]},
        "g.input[0].content",
    ),
    (
        {
            "type": "score_model",
            "name": "j",
            "model": "m",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "{{x}}"}]}],
        },
        "g.input[0].content[0].text",
    ),
    (
        {
            "type": "score_model",
            "name": "j",
            "model": "m",
            "input": [{"role": "user", "content": "x"}],
            "range": [1, 0],
        },
        "g.range",
    ),
    (
        {
            "type": "label_model",
            "name": "l",
            "model": "m",
            "input": [{"role": "user", "content": "x"}],
            "labels": ["a"],
            "passing_labels": ["b"],
        },
        "g.passing_labels",
    ),
    (
        {
            "type": "multi",
            "name": "m",
            "graders": {"a": {"type": "string_check", "name": "a", "input": "x", "reference": "y", "operation": "eq"}},
            "calculate_output": "a + b",
        },
        "g.calculate_output",
    ),
    (
        {
            "type": "multi",
            "name": "m",
            "graders": {"a": {"type": "python", "name": "a", "source": "x = ("}},
            "calculate_output": "a",
        },
        "g.graders.a.source",
    ),
    ({"type": "magic", "name": "m"}, "g.type"),
]


@pytest.mark.parametrize("grader, param", BAD)
def test_invalid_graders_name_the_field(grader: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check(grader, "g", lambda model: None)
    assert refused.value.param == param


def test_a_judge_the_organization_cannot_use_is_not_found() -> None:
    grader = {
        "type": "label_model",
        "name": "l",
        "model": "ft:someone-else",
        "labels": ["a"],
        "passing_labels": ["a"],
        "input": [{"role": "user", "content": "{{item.x}}"}],
    }
    with pytest.raises(NotFound):
        check(grader, "g", _no_model)


def test_pass_rules() -> None:
    assert passed({"type": "score_model", "range": [0, 10]}, Outcome(score=5.0))
    assert not passed({"type": "score_model", "range": [0, 10]}, Outcome(score=4.9))
    assert passed({"type": "python", "pass_threshold": 0.9}, Outcome(score=0.9))
    assert not passed({"type": "python"}, Outcome(error="boom"))
    assert math.isclose(_similarity("fuzzy_match", [("<think>x</think>same", "same")])[0], 1.0)
