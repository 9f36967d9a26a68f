"""The grader engine: one grader over a batch of rows → one ``Outcome`` per row.

A row is ``(sample, item)``: the ``sample`` namespace of a model output (``templates.sample_namespace``) and the
data-source item. Each type works on the whole batch — text metrics in-process, ``cosine`` with one embedding call,
``python`` through the sandbox pool in chunks, ``score_model`` / ``label_model`` with one batched call to the judge,
``multi`` by grading each sub-grader over the batch and then computing its formula per row. Whatever goes wrong with
a row (a variable with no value, a grader that raises, a judge that answers nonsense) errors that row only, with a
message and the kind of error ``/v1/fine_tuning/alpha/graders/run`` reports; nothing here raises for user input.
The engine knows nothing of evals, HTTP or the database: its callers pass the sandbox, the judge and the embedder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune.graders import formula, judges
from finetune.graders.messages import render_messages
from finetune.graders.sandbox import SandboxPool
from finetune.graders.similarity import Embed, string_check, text_similarity
from finetune.graders.templates import TemplateError, render
from finetune.graders.validate import named_graders

Row = tuple[dict[str, Any], dict[str, Any]]
# (model, chat bodies without "model") → for each body the chat.completion, or {"error": {"message": …}}
Judge = Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]]
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}


@dataclass
class Outcome:
    score: float | None = None
    error: str | None = None
    kind: str | None = None  # the graders.run error flag of an error, e.g. "python_grader_runtime_error"
    sample: dict[str, Any] | None = None  # a model grader's exchange with its judge
    label: str | None = None  # label_model: the label the judge chose
    usage: dict[str, dict[str, int]] = field(default_factory=dict)  # judge model → tokens
    sub: dict[str, float] = field(default_factory=dict)  # multi: each sub-grader's score


def passed(grader: dict[str, Any], outcome: Outcome) -> bool:
    """Pass rules: string_check / label_model a score of 1; text_similarity, python, score_model, multi a score at
    or above ``pass_threshold`` (default: 0.5; score_model: the middle of its range)."""
    if outcome.score is None:
        return False
    if grader["type"] in ("string_check", "label_model"):
        return outcome.score >= 1.0
    if "pass_threshold" in grader:
        return outcome.score >= grader["pass_threshold"]
    if grader["type"] == "score_model":
        low, high = judges.score_range(grader)
        return outcome.score >= (low + high) / 2
    return outcome.score >= 0.5


class GraderEngine:
    def __init__(
        self, *, sandbox: SandboxPool | None = None, judge: Judge | None = None, embed: Embed | None = None
    ) -> None:
        self.sandbox, self.judge, self.embed = sandbox, judge, embed

    def grade(self, grader: dict[str, Any], rows: Sequence[Row], owner: str) -> list[Outcome]:
        """``owner`` (the organization) keeps Python graders of different tenants in different interpreters."""
        kind = grader["type"]
        if kind in ("string_check", "text_similarity"):
            return self._textual(grader, rows)
        if kind == "python":
            return self._python(grader, rows, owner)
        if kind in ("score_model", "label_model"):
            return self._model(grader, rows)
        return self._multi(grader, rows, owner)

    def _textual(self, grader: dict[str, Any], rows: Sequence[Row]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(rows)
        pairs, where = [], []
        for i, (sample, item) in enumerate(rows):
            namespace = {"item": item, "sample": sample}
            try:
                pairs.append((render(grader["input"], namespace), render(grader["reference"], namespace)))
                where.append(i)
            except TemplateError as exc:
                outcomes[i] = Outcome(error=str(exc), kind="invalid_variable_error")
        scores: Sequence[float | None]
        try:
            if grader["type"] == "string_check":
                scores = [string_check(grader["operation"], t, r) for t, r in pairs]
            else:
                scores = text_similarity(grader["evaluation_metric"], pairs, self.embed)
        except Exception as exc:  # an embedding process that fails: the batch errors, the run goes on
            scores = [None] * len(pairs)
            for i in where:
                outcomes[i] = Outcome(error=f"{type(exc).__name__}: {exc}", kind="other_error")
        for i, score in zip(where, scores, strict=True):
            if score is not None:
                outcomes[i] = Outcome(score=float(score))
        return [o or Outcome(error="not graded", kind="other_error") for o in outcomes]

    def _python(self, grader: dict[str, Any], rows: Sequence[Row], owner: str) -> list[Outcome]:
        if self.sandbox is None:
            return [Outcome(error="python graders are not available here", kind="python_grader_server_error")] * len(
                rows
            )
        try:
            replies = self.sandbox.grade(owner, grader["source"], [(s, i) for s, i in rows])
        except RuntimeError as exc:  # the sandbox itself cannot start
            return [Outcome(error=str(exc), kind="python_grader_server_error")] * len(rows)
        return [
            Outcome(score=r.score) if r.error is None else Outcome(error=r.error, kind="python_grader_runtime_error")
            for r in replies
        ]

    def _model(self, grader: dict[str, Any], rows: Sequence[Row]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(rows)
        bodies, where = [], []
        for i, (sample, item) in enumerate(rows):
            try:
                messages = render_messages(grader["input"], {"item": item, "sample": sample})
            except TemplateError as exc:
                outcomes[i] = Outcome(error=str(exc), kind="invalid_variable_error")
                continue
            bodies.append(judges.request(grader, messages))
            where.append(i)
        if not bodies:
            answers = []
        elif self.judge is None:
            answers = [{"error": {"message": "model graders are not available here"}}] * len(bodies)
        else:
            answers = self.judge(grader["model"], bodies)
        for i, body, answer in zip(where, bodies, answers, strict=True):
            outcomes[i] = _judged(grader, body, answer)
        return [o for o in outcomes if o is not None]

    def _multi(self, grader: dict[str, Any], rows: Sequence[Row], owner: str) -> list[Outcome]:
        subs = named_graders(grader)
        graded = {name: self.grade(sub, rows, owner) for name, _, sub in subs}
        tree = formula.parse(grader["calculate_output"], list(graded))
        outcomes = []
        for i in range(len(rows)):
            mine = {name: results[i] for name, results in graded.items()}
            usage: dict[str, dict[str, int]] = {}
            for outcome in mine.values():
                add_usage(usage, outcome.usage)
            failed = next(((n, o) for n, o in mine.items() if o.score is None), None)
            if failed is not None:
                outcomes.append(Outcome(error=f"{failed[0]}: {failed[1].error}", kind=failed[1].kind, usage=usage))
                continue
            scores = {n: o.score for n, o in mine.items() if o.score is not None}
            try:
                outcomes.append(Outcome(score=formula.evaluate(tree, scores), usage=usage, sub=scores))
            except formula.FormulaError as exc:
                outcomes.append(Outcome(error=str(exc), kind="formula_parse_error", usage=usage, sub=scores))
        return outcomes


def _judged(grader: dict[str, Any], body: dict[str, Any], answer: dict[str, Any]) -> Outcome:
    if "error" in answer:
        message = answer["error"].get("message") if isinstance(answer["error"], dict) else str(answer["error"])
        return Outcome(error=f"the judge model failed: {message}", kind="model_grader_server_error")
    choice = (answer.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = {**ZERO_USAGE, **{k: v for k, v in (answer.get("usage") or {}).items() if k in ZERO_USAGE}}
    sample = {
        "input": body["messages"],
        "output": [{"role": "assistant", "content": text}],
        "finish_reason": choice.get("finish_reason") or "stop",
        "model": grader["model"],
        "usage": usage,
    }
    spent = {grader["model"]: dict(usage)}
    if choice.get("message", {}).get("refusal"):
        return Outcome(error="the judge model refused", kind="model_grader_refusal_error", sample=sample, usage=spent)
    try:
        if grader["type"] == "label_model":
            label = judges.parse_label(text, grader)
            return Outcome(score=float(label in grader["passing_labels"]), label=label, sample=sample, usage=spent)
        return Outcome(score=judges.parse_score(text, grader), sample=sample, usage=spent)
    except judges.ParseError as exc:
        return Outcome(error=str(exc), kind="model_grader_parse_error", sample=sample, usage=spent)


def add_usage(total: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    for model, usage in more.items():
        into = total.setdefault(model, dict(ZERO_USAGE))
        for key, value in usage.items():
            into[key] = into.get(key, 0) + int(value or 0)
