"""Evals and graders through the official client, on SQLite and Postgres, every object validated against the spec:
client.evals, client.evals.runs, client.evals.runs.output_items and client.fine_tuning.alpha.graders. ``jsonl``
runs grade samples the items carry (no engine needed); generation and model judges are in test_evals_serving.py."""

from __future__ import annotations

import json

import openai
import pytest

from tests.finetune_support import wait_until
from tests.support import LiveGateway, SpecRecorder

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a configured base model (no engine runs here)
PYTHON = "def grade(sample, item):\n    return 1.0 if sample['output_text'].strip() == item['label'] else 0.25\n"
CRITERIA = [
    {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "operation": "eq",
    },
    {
        "type": "text_similarity",
        "name": "fuzzy",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "evaluation_metric": "fuzzy_match",
        "pass_threshold": 0.8,
    },
    {"type": "python", "name": "py", "source": PYTHON, "image_tag": "2025-05-08", "pass_threshold": 0.5},
    {
        "type": "string_check",
        "name": "contains",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "operation": "ilike",
    },
]
ROWS = [  # (output_text, label): 2 right, 1 close, 1 wrong, 1 JSON
    ("Paris", "Paris"),
    ("Rome", "Rome"),
    ("Pariss", "Paris"),
    ("Berlin", "Madrid"),
    ('{"city": "paris"}', "Paris"),
]


@pytest.fixture(scope="module")
def org(gateway: LiveGateway) -> tuple[str, str, str]:
    return gateway.new_org_key("graders")


def _wait(client: openai.OpenAI, eval_id: str, run_id: str):  # noqa: ANN202
    return wait_until(
        lambda: (
            (r := client.evals.runs.retrieve(run_id, eval_id=eval_id)).status in ("completed", "failed", "canceled")
            and r
        ),
        120,
        "the eval run",
    )


def test_graders_validate_and_run(gateway: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gateway.client(org[2], recorder)
    graders = client.fine_tuning.alpha.graders
    for grader in CRITERIA[:2] + [{k: v for k, v in CRITERIA[2].items() if k != "pass_threshold"}]:
        assert graders.validate(grader=grader).grader.name == grader["name"]
    multi = {
        "type": "multi",
        "name": "combo",
        "calculate_output": "0.5 * exact + 0.5 * fuzzy",
        "graders": {"exact": CRITERIA[0], "fuzzy": {k: v for k, v in CRITERIA[1].items() if k != "pass_threshold"}},
    }
    assert graders.validate(grader=multi).grader.type == "multi"
    single = {"type": "multi", "name": "inverse", "graders": CRITERIA[0], "calculate_output": "1 - exact"}
    assert graders.validate(grader=single).grader.calculate_output == "1 - exact"  # the spec's one-grader form
    assert graders.run(grader=single, model_sample="Rome", item={"label": "Paris"}).reward == 1.0
    score = {
        "type": "score_model",
        "name": "judge",
        "model": BASE,
        "range": [0, 10],
        "input": [{"role": "user", "content": "Rate {{sample.output_text}} against {{item.label}}"}],
    }
    assert graders.validate(grader=score).grader.model == BASE

    ran = graders.run(grader=CRITERIA[0], model_sample="Paris", item={"label": "Paris"})
    assert ran.reward == 1.0 and ran.metadata.type == "string_check" and not ran.metadata.errors.other_error
    ran = graders.run(grader=multi, model_sample="Pariss", item={"label": "Paris"})
    assert ran.reward == pytest.approx(0.5 * 0 + 0.5 * 10 / 11) and set(ran.sub_rewards) == {"exact", "fuzzy"}
    json_check = {
        "type": "string_check",
        "name": "j",
        "input": "{{sample.output_json.city}}",
        "reference": "{{item.label}}",
        "operation": "ilike",
    }
    assert graders.run(grader=json_check, model_sample='{"city": "PARIS"}', item={"label": "paris"}).reward == 1.0
    assert graders.run(
        grader=json_check, model_sample="PARIS", item={"label": "paris"}
    ).metadata.errors.invalid_variable_error  # not JSON: no output_json
    python = {"type": "python", "name": "p", "source": PYTHON}
    assert graders.run(grader=python, model_sample=" Paris ", item={"label": "Paris"}).reward == 1.0
    hostile = {"type": "python", "name": "h", "source": "def grade(s, i):\n    return len(open('/etc/passwd').read())"}
    ran = graders.run(grader=hostile, model_sample="x", item={})
    assert ran.reward == 0.0 and ran.metadata.errors.python_grader_runtime_error
    assert "Permission denied" in ran.metadata.errors.python_grader_runtime_error_details
    missing = graders.run(grader=CRITERIA[0], model_sample="x", item={})
    assert missing.metadata.errors.invalid_variable_error
    unserved = graders.run(grader=score, model_sample="x", item={"label": "y"})  # no engine runs here
    assert unserved.reward == 0.0 and unserved.metadata.errors.model_grader_server_error
    assert unserved.metadata.errors.model_grader_server_error_details


BAD_GRADERS = [
    ({"type": "python", "name": "p", "source": "def grade(s, i):\n  return ("}, "grader.source"),
    ({"type": "python", "name": "p", "source": "x = 1"}, "grader.source"),
    ({"type": "string_check", "name": "s", "input": "{{answer}}", "reference": "x", "operation": "eq"}, "grader.input"),
    (
        {"type": "string_check", "name": "s", "input": "x", "reference": "x", "operation": "startswith"},
        "grader.operation",
    ),
    (
        {"type": "multi", "name": "m", "graders": {"a": CRITERIA[0]}, "calculate_output": "a + __import__('os')"},
        "grader.calculate_output",
    ),
]


@pytest.mark.parametrize("grader, param", BAD_GRADERS)
def test_invalid_graders_are_400_naming_the_field(gateway: LiveGateway, org, grader: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.client(org[2]).fine_tuning.alpha.graders.validate(grader=grader)
    assert refused.value.body["param"] == param


def test_another_organizations_judge_is_not_found(gateway: LiveGateway, org) -> None:
    client = gateway.client(org[2])
    judge = {
        "type": "score_model",
        "name": "j",
        "model": f"ft:{BASE}:org-someone:x:1234",
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.alpha.graders.run(grader=judge, model_sample="x")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[judge | {"type": "label_model", "labels": ["a"], "passing_labels": ["a"]}],
        )


def test_jsonl_runs_grade_given_samples_end_to_end(gateway: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gateway.client(org[2], recorder)
    evaluation = client.evals.create(
        name="given samples",
        metadata={"suite": "capitals"},
        testing_criteria=CRITERIA,
        data_source_config={
            "type": "custom",
            "include_sample_schema": True,
            "item_schema": {"type": "object", "properties": {"label": {"type": "string"}}},
        },
    )
    assert evaluation.object == "eval" and [c.name for c in evaluation.testing_criteria] == [
        c["name"] for c in CRITERIA
    ]
    assert client.evals.retrieve(evaluation.id).data_source_config.type == "custom"
    assert client.evals.update(evaluation.id, name="capitals").name == "capitals"
    assert evaluation.id in [e.id for e in client.evals.list(limit=100)]

    lines = [{"item": {"label": label}, "sample": {"output_text": text}} for text, label in ROWS]
    lines.append({"item": {"label": "Oslo"}})  # no sample: errored
    file_id = client.files.create(
        file=("given.jsonl", "\n".join(json.dumps(r) for r in lines).encode()), purpose="evals"
    ).id
    run = client.evals.runs.create(
        evaluation.id,
        name="from file",
        metadata={"k": "v"},
        data_source={"type": "jsonl", "source": {"type": "file_id", "id": file_id}},
    )
    assert run.status in ("queued", "in_progress") and run.report_url.endswith(
        f"/console/#/evals/{evaluation.id}/runs/{run.id}"
    )
    done = _wait(client, evaluation.id, run.id)
    assert done.status == "completed", done.error
    assert done.result_counts.model_dump() == {"total": 6, "errored": 1, "failed": 3, "passed": 2}
    per = {p.testing_criteria: (p.passed, p.failed) for p in done.per_testing_criteria_results}
    # exact: Paris, Rome; fuzzy ≥ 0.8: + Pariss; py: exact ones 1.0, others 0.25; contains: all but Berlin
    assert per == {"exact": (2, 3), "fuzzy": (3, 2), "py": (2, 3), "contains": (4, 1)}

    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100))
    assert sorted(i.datasource_item_id for i in items) == list(range(6))
    by_index = {i.datasource_item_id: i for i in items}
    close = {r.name: r for r in by_index[2].results}
    assert close["fuzzy"].passed and close["fuzzy"].score == pytest.approx(10 / 11, abs=1e-6)
    assert close["py"].score == 0.25 and not close["exact"].passed and by_index[2].status == "fail"
    assert by_index[5].status == "error" and by_index[5].sample.error.message
    assert by_index[0].sample.output[0].content == "Paris"
    failed = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, status="fail"))
    assert {i.datasource_item_id for i in failed} == {2, 3, 4}
    one = client.evals.runs.output_items.retrieve(items[0].id, eval_id=evaluation.id, run_id=run.id)
    assert one.id == items[0].id and one.results

    inline = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "jsonl",
            "source": {
                "type": "file_content",
                "content": [{"item": {"label": "Paris"}, "sample": {"output_text": "Paris"}}],
            },
        },
    )
    assert _wait(client, evaluation.id, inline.id).result_counts.passed == 1
    assert [r.id for r in client.evals.runs.list(evaluation.id, order="asc")] == [run.id, inline.id]
    page = client.evals.runs.list(evaluation.id, status="completed", limit=1)
    assert [r.id for r in page.data] == [run.id] and page.has_more
    with pytest.raises(openai.BadRequestError):  # finished: no cancel
        client.evals.runs.cancel(inline.id, eval_id=evaluation.id)
    assert client.evals.runs.delete(inline.id, eval_id=evaluation.id).deleted
    with pytest.raises(openai.NotFoundError):  # another organization sees nothing
        gateway.client(gateway.new_org_key("other")[2]).evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert client.evals.delete(evaluation.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(evaluation.id)


def test_python_graders_that_misbehave_error_their_items(gateway: LiveGateway, org, recorder: SpecRecorder) -> None:
    source = (
        "import os, sys, ctypes\ndef grade(sample, item):\n    kind = item['kind']\n"
        "    if kind == 'exit': sys.exit(1)\n    if kind == 'segv': ctypes.string_at(0)\n"
        "    if kind == 'raise': raise ValueError('no')\n    if kind == 'net':\n"
        "        import socket; socket.create_connection(('127.0.0.1', 5432))\n    return 1.0\n"
    )
    client = gateway.client(org[2], recorder)
    evaluation = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{"type": "python", "name": "p", "source": source}],
    )
    kinds = ["ok", "exit", "ok", "segv", "ok", "raise", "net", "ok"]
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "jsonl",
            "source": {
                "type": "file_content",
                "content": [{"item": {"kind": k}, "sample": {"output_text": "x"}} for k in kinds],
            },
        },
    )
    done = _wait(client, evaluation.id, run.id)
    assert done.status == "completed" and done.result_counts.errored == 4 and done.result_counts.passed == 4
    items = {i.datasource_item_id: i for i in client.evals.runs.output_items.list(run.id, eval_id=evaluation.id)}
    assert [items[i].status for i in range(8)] == ["pass", "error", "pass", "error", "pass", "error", "error", "pass"]
    assert "sys.exit" in items[1].results[0].model_dump()["error"]["message"]
    assert gateway.admin().get("/health").status_code == 200


REFUSED = [  # (create-run data source, the param of the 400)
    ({"type": "responses", "source": {"type": "file_content", "content": [{"item": {}}]}}, "data_source.type"),
    (
        {
            "type": "completions",
            "model": BASE,
            "source": {"type": "traces"},
            "input_messages": {"type": "item_reference", "item_reference": "item.m"},
        },
        "data_source.source.type",
    ),
    (
        {
            "type": "completions",
            "model": BASE,
            "source": {"type": "file_content", "content": [{"item": {}}]},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]},
        },
        "data_source.input_messages.template[0].content",
    ),
    (
        {
            "type": "completions",
            "model": BASE,
            "source": {"type": "file_content", "content": [{"item": {}}]},
            "input_messages": {"type": "item_reference", "item_reference": "item.m"},
            "sampling_params": {"model": "ft:someone-elses"},
        },
        "data_source.sampling_params.model",
    ),
    ({"type": "jsonl", "source": {"type": "file_content", "content": [{"item": 3}]}}, "data_source.source.content[0]"),
]


@pytest.mark.parametrize("source, param", REFUSED)
def test_run_sources_refused_with_a_clear_400(gateway: LiveGateway, org, source: dict, param: str) -> None:
    client = gateway.client(org[2])
    evaluation = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=[CRITERIA[0]]
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.evals.runs.create(evaluation.id, data_source=source)
    assert refused.value.body["param"] == param, refused.value.body


def test_eval_creation_errors_point_into_the_request(gateway: LiveGateway, org) -> None:
    client = gateway.client(org[2])
    config = {"type": "custom", "item_schema": {"type": "object"}}
    broken = {"type": "python", "name": "p", "source": "def grade(:"}
    with pytest.raises(openai.BadRequestError) as refused:
        client.evals.create(data_source_config=config, testing_criteria=[CRITERIA[0], CRITERIA[1], broken])
    assert refused.value.body["param"] == "testing_criteria[2].source"
    with pytest.raises(openai.BadRequestError) as refused:
        client.evals.create(data_source_config={"type": "traces"}, testing_criteria=[CRITERIA[0]])
    assert refused.value.body["param"] == "data_source_config.type" and "traces" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.evals.create(data_source_config=config, testing_criteria=[CRITERIA[0], CRITERIA[0]])
    assert refused.value.body["param"] == "testing_criteria[1].name"
