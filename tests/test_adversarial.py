"""A hostile tenant at the edge, against a real vLLM engine, on SQLite and on Postgres.

Every endpoint that forwards to an engine × a list of smuggled fields: the answer is a 4xx naming the field, or the
field has no effect — checked by the tokens that came back (``return_token_ids``), compared with what the base
model and another organization's adapter answer to the same clean request. Also: the engine's port refuses callers
without its key, deep or huge JSON is a 400/413 on any route, prompts longer than the engine's context are
``context_length_exceeded``, and usage is still counted after hostile ids and for streams the client drops.

One engine serves the module: the SQLite gateway spawns it; the Postgres gateway uses it as an external replica
(``engine_urls`` + ``engine_api_key``), which also exercises the key of external replicas.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.finetune_support import TINY, wait_until
from tests.serving_support import (
    engine_address,
    engine_gateway,
    engines,
    greedy_tokens,
    make_adapter,
    on_database,
    register_adapter,
)
from tests.support import ADMIN_KEY, LiveGateway

QUESTION = [{"role": "user", "content": "Tell me about rivers."}]
PROMPT = "Once upon a time"
TOKENS = 8
LIMITS = {"TUNEGATE_REQUESTS__MAX_BODY_BYTES": str(1024 * 1024)}
ENDPOINTS = ["chat", "chat-stream", "completions", "completions-stream"]


@pytest.fixture(scope="module")
def engine_gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with engine_gateway(tiny_model, tmp_path_factory.mktemp("adversarial"), own_engine=True, **LIMITS) as gateway:
        yield gateway


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gw(
    request: pytest.FixtureRequest, engine_gw: LiveGateway, tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    with on_database(
        request.param, engine_gw, tiny_model, tmp_path_factory.mktemp("adversarial-db"), **LIMITS
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def adapters(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adversarial-adapters")
    return {
        "victim": make_adapter(tiny_model, root / "victim", seed=41),
        "attacker": make_adapter(tiny_model, root / "attacker", seed=42),
    }


@pytest.fixture(scope="module")
def tenants(gw: LiveGateway, adapters: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Two organizations, each with a fine-tuned model (its adapter registered as a job's child does)."""
    out = {}
    for name, path in adapters.items():
        org, _, key = gw.new_org_key(name)
        model = register_adapter(gw, org, path, name)
        out[name] = {"org": org, "key": key, "model": model, "path": str(path)}
    out["victim"]["engine_name"] = _engine_name(gw, out["victim"]["model"])
    return out


def _engine_name(gw: LiveGateway, model: str) -> str:
    """The engine-side adapter name (its blob key, ``models/<job>/final``) of a registered model."""
    from sqlmodel import select

    from storage.db import Database
    from storage.tables import FineTunedModel

    db = Database(gw.database_url)
    try:
        with db.session() as s:
            return s.exec(select(FineTunedModel.adapter_key).where(FineTunedModel.id == model)).one()
    finally:
        db.dispose()


def ask(
    gw: LiveGateway, key: str, endpoint: str, model: str, extra: dict[str, Any] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], list[int] | None]:
    """(status, error or answer, generated token ids) of one greedy request."""
    chat = endpoint.startswith("chat")
    body = {
        "model": model,
        "max_tokens": TOKENS,
        "temperature": 0,
        "return_token_ids": True,
        "stream": endpoint.endswith("stream"),
        **({"messages": QUESTION} if chat else {"prompt": PROMPT}),
    }
    content = raw if raw is not None else json.dumps({**body, **(extra or {})}).encode()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    with httpx.Client(
        base_url=gw.url, headers={"authorization": f"Bearer {key}", "content-type": "application/json"}, timeout=120
    ) as http:
        response = http.post(path, content=content)
    if response.status_code != 200:
        return response.status_code, response.json()["error"], None
    if not body["stream"]:
        answer = response.json()
        return 200, answer, answer["choices"][0]["token_ids"]
    events = [json.loads(e.removeprefix("data: ")) for e in response.text.strip().split("\n\n") if e != "data: [DONE]"]
    assert "error" not in events[-1], events[-1]
    tokens = [t for e in events for c in e["choices"] for t in c.get("token_ids") or []]
    return 200, events[-1], tokens


def smuggled(t: dict[str, dict[str, str]], chat: bool) -> dict[str, Any]:
    """Fields a caller must not get through to the engine: each names another organization's adapter where it can."""
    victim = t["victim"]
    lora = {"lora_name": victim["engine_name"], "lora_int_id": 7, "lora_path": victim["path"]}
    fields: dict[str, Any] = {
        "lora_request": lora,
        "lora_name": victim["engine_name"],
        "adapter": victim["engine_name"],
        "request_id": "r" * 10_000,
        "priority": -1000,
        "kv_transfer_params": {"do_remote_prefill": True},
        "vllm_xargs": {"lora": victim["engine_name"]},
        "cache_salt": "victim",
        "an_unknown_key": {"x": 1},
        "logits_processors": ["os.system"],
        "chat_template_kwargs": {"model": victim["engine_name"]},
    }
    if chat:
        fields["chat_template"] = "{{ 'hello' }}"
    return fields


@pytest.fixture(scope="module")
def references(
    gw: LiveGateway, tenants: dict[str, dict[str, str]], tiny_model: str, adapters: dict[str, Path]
) -> dict[str, dict[str, list[int]]]:
    """Clean answers per endpoint: the base model's (asked by the attacker) and the victim's own adapter's."""
    refs: dict[str, dict[str, list[int]]] = {}
    for endpoint in ENDPOINTS:
        base = ask(gw, tenants["attacker"]["key"], endpoint, TINY)
        own = ask(gw, tenants["victim"]["key"], endpoint, tenants["victim"]["model"])
        assert base[0] == own[0] == 200, (base, own)
        refs[endpoint] = {"base": base[2], "victim": own[2]}
        assert base[2] != own[2], "the adapter must answer differently from the base for the test to mean much"
    # the clean chat answers are the model's own greedy tokens: base and adapter really are what answered
    assert refs["chat"]["base"] == greedy_tokens(tiny_model, None, QUESTION, TOKENS)[: len(refs["chat"]["base"])]
    victim = greedy_tokens(tiny_model, adapters["victim"], QUESTION, TOKENS)
    assert refs["chat"]["victim"] == victim[: len(refs["chat"]["victim"])]
    return refs


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_smuggled_fields_are_refused_or_without_effect(gw: LiveGateway, tenants, references, endpoint: str) -> None:
    attacker, victim = tenants["attacker"], tenants["victim"]
    chat = endpoint.startswith("chat")
    for field, value in smuggled(tenants, chat).items():
        status, answer, tokens = ask(gw, attacker["key"], endpoint, TINY, {field: value})
        if status == 200:  # accepted: then it changed nothing
            assert tokens == references[endpoint]["base"] != references[endpoint]["victim"], field
        else:
            assert status == 400 and answer["param"] == field and field in answer["message"], (field, answer)
    # `model` itself: another organization's model, by its id or by its engine-side adapter name → not found
    for model in (victim["model"], victim["engine_name"], victim["path"]):
        status, answer, _ = ask(gw, attacker["key"], endpoint, model)
        assert status == 404 and answer["param"] == "model" and answer["code"] == "model_not_found"
    # a second `model` key in the same JSON object: whichever wins, the victim's adapter does not answer
    body = json.dumps(
        {
            "model": TINY,
            "max_tokens": TOKENS,
            "temperature": 0,
            "return_token_ids": True,
            "stream": endpoint.endswith("stream"),
            **({"messages": QUESTION} if chat else {"prompt": PROMPT}),
        }
    )
    status, answer, tokens = ask(
        gw,
        attacker["key"],
        endpoint,
        TINY,
        raw=(body[:-1] + f', "model": {json.dumps(victim["engine_name"])}}}').encode(),
    )
    assert status == 404 or tokens == references[endpoint]["base"], (status, answer)
    # fields inside messages / nested objects are rebuilt from their known keys too
    if chat:
        nested = [{"role": "user", "content": QUESTION[0]["content"], "model": victim["engine_name"]}]
        status, answer, _ = ask(gw, attacker["key"], endpoint, TINY, {"messages": nested})
        assert status == 400 and answer["param"] == "messages[0].model"
    # fields the gateway accepts and ignores change nothing; the attacker's own adapter answers as itself
    ignored = {"user": "u" * 10_000, "metadata": {"k": "v"}}
    status, _, tokens = ask(gw, attacker["key"], endpoint, TINY, ignored)
    assert status == 200 and tokens == references[endpoint]["base"]
    status, _, tokens = ask(gw, attacker["key"], endpoint, attacker["model"], ignored)
    assert status == 200 and tokens not in (references[endpoint]["base"], references[endpoint]["victim"])


def test_eval_run_sampling_params_cannot_choose_the_model(gw: LiveGateway, tenants, references) -> None:
    attacker, victim = tenants["attacker"], tenants["victim"]
    client = gw.client(attacker["key"])
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
    source = {"type": "file_content", "content": [{"item": {"q": QUESTION[0]["content"], "a": "x"}}] * 2}
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]}
    fields = {
        "model": victim["engine_name"],
        **smuggled(tenants, chat=True),
        "stream": True,
        "n": 3,
        "messages": QUESTION,
    }
    for field, value in fields.items():
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {attacker['key']}"}) as http:
            refused = http.post(
                f"/v1/evals/{evaluation.id}/runs",
                json={
                    "data_source": {
                        "type": "completions",
                        "model": TINY,
                        "source": source,
                        "input_messages": template,
                        "sampling_params": {"max_completion_tokens": TOKENS, field: value},
                    }
                },
            )
        assert refused.status_code == 400, (field, refused.text)
        assert refused.json()["error"]["param"] == f"data_source.sampling_params.{field}"
    # a clean run on the base answers what the base answers in chat
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY,
            "source": source,
            "input_messages": template,
            "sampling_params": {"max_completion_tokens": TOKENS, "temperature": 0},
        },
    )
    done = wait_until(
        lambda: (
            (r := client.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in ("completed", "failed") and r
        ),
        120,
        "the eval run",
    )
    assert done.status == "completed", done.error
    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
    base_text = ask(gw, attacker["key"], "chat", TINY)[1]["choices"][0]["message"]["content"]
    assert [i.sample.output[0].content for i in items] == [base_text, base_text]


def test_the_engine_port_refuses_callers_without_its_key(engine_gw: LiveGateway) -> None:
    engine = engine_address(engine_gw)
    assert engine.api_key and engine.url.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=engine.url, timeout=30) as http:
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/invocations"),
            ("GET", "/metrics"),
            ("POST", "/tokenize"),
            ("POST", "/v1/load_lora_adapter"),
            ("POST", "/abort_requests"),
            ("GET", "/version"),
            ("GET", "/docs"),
        ]:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": engine.api_key}):
                assert http.request(method, path, headers=headers, json={}).status_code == 401, (path, headers)
        assert http.get("/health").status_code == 200
        assert TINY in {m["id"] for m in http.get("/v1/models", headers=engine.auth).json()["data"]}
        assert http.get("/metrics", headers=engine.auth).status_code == 200
    # the key is in no API answer, and the engine's environment holds no gateway secret
    with engine_gw.admin() as admin:
        shown = admin.get("/admin/engines").text + httpx.get(f"{engine_gw.url}/health").text
    assert engine.api_key not in shown
    pid = engines(engine_gw)[0]["pid"]
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    assert environ["VLLM_API_KEY"] == engine.api_key
    assert not {"TUNEGATE_ADMIN_KEY", "TUNEGATE_DATABASE_URL"} & set(environ) and ADMIN_KEY not in environ.values()
    assert engine.api_key not in Path(f"/proc/{pid}/cmdline").read_text()
    settings_files = list((engine_gw.data_dir / "run").glob("engines-*.json"))
    assert settings_files and all(json.loads(f.read_text()).get("database_url") is None for f in settings_files)


def test_limits_on_any_route_are_400s_never_500s(gw: LiveGateway, tenants) -> None:
    key = tenants["attacker"]["key"]
    depth = 100_000
    deep_chat = (
        '{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi", "x": '
        + "[" * depth
        + "]" * depth
        + "}]}"
    ).encode()
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
        for path, content in [
            ("/v1/chat/completions", deep_chat),
            ("/v1/completions", b'{"prompt": ' + b"[" * depth),
            ("/v1/evals", b'{"name": ' + b"[" * depth + b"]" * depth + b"}"),
            ("/v1/fine_tuning/jobs", b"{" * depth),
        ]:
            for content_type in ("application/json", "text/plain"):
                answer = http.post(path, content=content, headers={"content-type": content_type})
                assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json", (
                    path,
                    answer.text,
                )
        with gw.admin() as admin:  # the admin API too
            answer = admin.post("/admin/organizations", content=b'{"name": ' + b"[" * depth + b"]" * depth + b"}")
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
        huge = http.post("/v1/chat/completions", json={"model": TINY, "messages": QUESTION, "pad": "x" * (2 << 20)})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
        for extra, param in [
            ({"n": 17}, "n"),
            ({"max_tokens": 10**6}, "max_tokens"),
            ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ]:
            answer = http.post("/v1/chat/completions", json={"model": TINY, "messages": QUESTION, **extra})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
        long = [{"role": "user", "content": "river stone cloud " * 1500}]  # well past the engine's 2048 tokens
        answer = http.post("/v1/chat/completions", json={"model": TINY, "messages": long, "max_tokens": 2})
        assert answer.status_code == 400, answer.text
        assert (
            answer.json()["error"]["code"] == "context_length_exceeded"
            and answer.json()["error"]["param"] == "messages"
        )


def test_usage_survives_hostile_ids_and_dropped_streams(gw: LiveGateway) -> None:
    org, _, key = gw.new_org_key("usage-after-hostile-ids")

    def requests_and_tokens() -> tuple[int, int]:
        with gw.admin() as admin:
            rows = admin.get("/admin/usage", params={"organization_id": org}).raise_for_status().json()["data"]
        return sum(r["requests"] for r in rows), sum(r["completion_tokens"] for r in rows)

    headers = {"authorization": f"Bearer {key}", "x-request-id": "q" * 128}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=120) as http:
        refused = http.post(
            "/v1/chat/completions", json={"model": TINY, "messages": QUESTION, "request_id": "r" * 5000}
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "request_id"
        for _ in range(3):
            answer = http.post("/v1/chat/completions", json={"model": TINY, "messages": QUESTION, "max_tokens": 2})
            assert answer.status_code == 200 and len(answer.json()["id"]) <= 64
        wait_until(lambda: requests_and_tokens()[0] == 3, 20, "the three chats after a hostile request_id counted")
        # a stream the client leaves after a few chunks: what was generated is counted
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": TINY, "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True, "stream": True},
        ) as stream:
            seen = 0
            for line in stream.iter_lines():
                seen += line.startswith("data: {")
                if seen >= 5:
                    break
    requests, tokens = wait_until(lambda: (u := requests_and_tokens())[0] == 4 and u, 60, "the dropped stream counted")
    assert 6 + 4 <= tokens < 6 + 1500, tokens  # at least the 4 tokens read (5 events: the role delta, 4 tokens)
