"""What an eval run records: each item's output item (its sample and every grader's result) and the run's running
totals (result counts, per-criterion pass/fail, per-model usage), kept incrementally — each batch adds its own
items, nothing is re-read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune.graders.engine import ZERO_USAGE, Outcome, add_usage, passed
from storage.ids import new_id, now
from storage.tables import EvalOutputItem, EvalRun


def result(grader: dict[str, Any], outcome: Outcome) -> dict[str, Any]:
    """One ``EvalRunOutputItemResult``: name, type, score, passed, sample (+ error / label when there is one)."""
    out: dict[str, Any] = {
        "name": grader["name"],
        "type": grader["type"],
        "score": round(outcome.score, 6) if outcome.score is not None else 0.0,
        "passed": passed(grader, outcome),
        "sample": outcome.sample,
    }
    if outcome.error is not None:
        out["error"] = {"code": outcome.kind or "grader_error", "message": outcome.error}
    if outcome.label is not None:
        out["label"] = outcome.label
    return out


def sample_record(
    run: EvalRun, messages: list[dict], answer: dict[str, Any] | None, params: dict[str, Any], error: str | None = None
) -> dict[str, Any]:
    """An output item's ``sample``: the prompt, the model's output, usage and sampling parameters."""
    choice = ((answer or {}).get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        output["tool_calls"] = message["tool_calls"]
    usage = {**ZERO_USAGE, **{k: v for k, v in ((answer or {}).get("usage") or {}).items() if k in ZERO_USAGE}}
    return {
        "input": messages,
        "output": [output] if answer else [],
        "model": run.model,
        "finish_reason": "error" if error else choice.get("finish_reason") or "stop",
        "usage": usage,
        "error": {"code": "sample_error", "message": error} if error else None,
        "temperature": float(params.get("temperature", 0)),
        "top_p": float(params.get("top_p", 1.0)),
        "max_completion_tokens": int(params.get("max_completion_tokens") or params.get("max_tokens") or 0),
        "seed": int(params.get("seed") or 0),
    }


def output_item(
    run: EvalRun, index: int, item: dict[str, Any], sample: dict[str, Any], results: list[dict[str, Any]]
) -> EvalOutputItem:
    if sample.get("error") or any("error" in r for r in results):
        status = "error"
    else:
        status = "pass" if all(r["passed"] for r in results) else "fail"
    return EvalOutputItem(
        id=new_id("outputitem_"),
        run_id=run.id,
        eval_id=run.eval_id,
        datasource_item_id=index,
        datasource_item=item,
        status=status,
        results=results,
        sample=sample,
        created_at=now(),
    )


@dataclass
class Totals:
    criteria: list[str]
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "errored": 0, "failed": 0, "passed": 0})
    per: dict[str, list[int]] = field(default_factory=dict)  # criterion → [passed, failed]
    usage: dict[str, dict[str, int]] = field(default_factory=dict)  # model → tokens and invocation_count

    def add(self, items: list[EvalOutputItem], sampled_model: str) -> None:
        for row in items:
            self.counts["total"] += 1
            self.counts[{"error": "errored", "fail": "failed", "pass": "passed"}[row.status]] += 1
            for r in row.results:
                tally = self.per.setdefault(r["name"], [0, 0])
                tally[0 if r["passed"] else 1] += 1
                judged = r.get("sample") or {}
                if judged.get("model"):
                    self._use(judged["model"], judged.get("usage") or {})
            if sampled_model and not (row.sample.get("error")):
                self._use(sampled_model, row.sample.get("usage") or {})

    def _use(self, model: str, usage: dict[str, Any]) -> None:
        add_usage(self.usage, {model: {k: int(usage.get(k) or 0) for k in ZERO_USAGE}})
        self.usage[model]["invocation_count"] = self.usage[model].get("invocation_count", 0) + 1

    def fields(self) -> dict[str, Any]:
        per = [
            {"testing_criteria": name, "passed": self.per.get(name, [0, 0])[0], "failed": self.per.get(name, [0, 0])[1]}
            for name in self.criteria
        ]
        models = [
            {
                "model_name": model,
                "invocation_count": u.get("invocation_count", 0),
                "prompt_tokens": u["prompt_tokens"],
                "completion_tokens": u["completion_tokens"],
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
                "cached_tokens": u["cached_tokens"],
            }
            for model, u in self.usage.items()
        ]
        return {"result_counts": dict(self.counts), "per_testing_criteria_results": per, "per_model_usage": models}
