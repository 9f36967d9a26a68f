"""An eval run's records without a database: output items and the incremental totals a run keeps per batch
(equal to a recount of every item, so nothing needs re-reading)."""

from __future__ import annotations

import random

from finetune.evals.results import Totals, output_item, result, sample_record
from finetune.graders.engine import Outcome
from storage.tables import EvalRun

RUN = EvalRun(id="evalrun_x", eval_id="eval_x", organization_id="org", model="m", created_at=0)
CRITERIA = [
    {"type": "string_check", "name": "a"},
    {"type": "score_model", "name": "j", "model": "judge", "range": [0, 1], "pass_threshold": 0.5},
]


def _item(i: int, rng: random.Random):  # noqa: ANN202
    if rng.random() < 0.1:
        return output_item(RUN, i, {"n": i}, sample_record(RUN, [], None, {}, "engine down"), [])
    answer = {
        "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    judged = {"model": "judge", "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}
    outcomes = [
        Outcome(score=float(rng.random() < 0.6)),
        Outcome(score=rng.random(), sample=judged) if rng.random() < 0.9 else Outcome(error="parse", kind="x"),
    ]
    return output_item(
        RUN,
        i,
        {"n": i},
        sample_record(RUN, [{"role": "user", "content": "q"}], answer, {}),
        [result(c, o) for c, o in zip(CRITERIA, outcomes, strict=True)],
    )


def test_batches_add_up_to_a_recount() -> None:
    rng = random.Random(5)
    items = [_item(i, rng) for i in range(500)]
    running = Totals([c["name"] for c in CRITERIA])
    for start in range(0, len(items), 32):
        running.add(items[start : start + 32], "m")
    recount = Totals([c["name"] for c in CRITERIA])
    recount.add(items, "m")
    assert running.fields() == recount.fields()
    fields = running.fields()
    counts = fields["result_counts"]
    assert counts["total"] == 500 == counts["errored"] + counts["failed"] + counts["passed"]
    assert counts["errored"] == sum(i.status == "error" for i in items) > 0
    usage = {u["model_name"]: u for u in fields["per_model_usage"]}
    generated = sum(1 for i in items if not i.sample["error"])
    assert usage["m"]["invocation_count"] == generated and usage["m"]["prompt_tokens"] == 3 * generated
    judged = sum(1 for i in items for r in i.results if r["sample"])
    assert usage["judge"]["invocation_count"] == judged and usage["judge"]["total_tokens"] == 8 * judged
    per = {p["testing_criteria"]: p for p in fields["per_testing_criteria_results"]}
    assert per["a"]["passed"] + per["a"]["failed"] == generated


def test_an_errored_grader_errors_its_item() -> None:
    ok = sample_record(RUN, [], {"choices": [{"message": {"content": "x"}}]}, {"max_tokens": 9, "seed": 3})
    assert ok["max_completion_tokens"] == 9 and ok["seed"] == 3 and ok["error"] is None
    bad = result(CRITERIA[1], Outcome(error="no number", kind="model_grader_parse_error"))
    assert bad["error"] == {"code": "model_grader_parse_error", "message": "no number"} and not bad["passed"]
    assert output_item(RUN, 0, {}, ok, [result(CRITERIA[0], Outcome(score=1.0)), bad]).status == "error"
    assert output_item(RUN, 0, {}, ok, [result(CRITERIA[0], Outcome(score=1.0))]).status == "pass"
    assert output_item(RUN, 0, {}, ok, [result(CRITERIA[0], Outcome(score=0.0))]).status == "fail"
