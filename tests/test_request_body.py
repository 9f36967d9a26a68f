"""The allow-list of engine bodies, JSON depth/size limits, usage rows that cannot be written, child environments.

Pure unit tests (no engine): the live side — which adapter answered a smuggling request — is tests/test_adversarial.py.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from gateway.body_limits import check, depth_problem
from serving.request_body import generation, parse, validate_sampling_params
from storage.errors import InvalidRequest, PayloadTooLarge
from storage.settings import RequestLimits, Settings

LIMITS = RequestLimits()
HELLO = [{"role": "user", "content": "hi"}]
# fields a caller must never get through to an engine, and what OpenAI's schema or vLLM calls them
SMUGGLED = {
    "request_id": "x" * 10_000,
    "priority": -100,
    "kv_transfer_params": {"do_remote_decode": True},
    "cache_salt": "s",
    "vllm_xargs": {"a": 1},
    "lora_request": {"lora_name": "models/x/final"},
    "chat_template": "{{ 'pwned' }}",
    "chat_template_kwargs": {"x": 1},
    "logits_processors": ["os.system"],
    "allowed_token_ids": [1],
    "mm_processor_kwargs": {},
    "truncate_prompt_tokens": 1,
    "an_unknown_key": 1,
    "add_generation_prompt": False,
    "echo": True,  # echo: completions only
}


@pytest.mark.parametrize("field", sorted(SMUGGLED))
def test_engine_internal_and_unknown_fields_are_refused_by_name(field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse("chat.completions", {"model": "m", "messages": HELLO, field: SMUGGLED[field]}, LIMITS)
    assert err.value.param == field and err.value.code == "unknown_parameter" and field in err.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x", "lora_request": {}}]}, "messages[0].lora_request"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "model": "y"}]}]},
            "messages[0].content[0].model",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "model": "y"}}]}, "tools[0].function.model"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "lora": 1}}},
            "response_format.json_schema.lora",
        ),
        (
            {"stream_options": {"include_usage": True, "continuous_usage_stats": True}},
            "stream_options.continuous_usage_stats",
        ),
        ({"structured_outputs": {"json": {}, "backend": "x"}}, "structured_outputs.backend"),
    ],
)
def test_nested_objects_are_rebuilt_from_their_known_keys(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse("chat.completions", {"model": "m", "messages": HELLO, **body}, LIMITS)
    assert err.value.param == param


def test_tunegate_sets_model_ids_and_stream_options_last() -> None:
    request = parse(
        "chat.completions",
        {
            "model": "ft:mine",
            "messages": HELLO,
            "stream": True,
            "stream_options": {"include_usage": False},
            "temperature": 0,
            "top_k": 5,
            "guided_choice": ["a", "b"],
            "user": "u",
            "metadata": {"k": "v"},
        },
        LIMITS,
    )
    body = request.body("models/job/final", request_id="abc")
    assert body["model"] == "models/job/final" and body["request_id"] == "abc" and body["messages"] == HELLO
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert body["structured_outputs"] == {"choice": ["a", "b"]} and body["top_k"] == 5
    assert "user" not in body and "metadata" not in body and not request.include_usage
    llama = parse("completions", {"model": "m", "prompt": "x"}, LIMITS).body("m", engine="llama.cpp", request_id="abc")
    assert llama["repeat_penalty"] == 1.0 and "request_id" not in llama


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"n": 17}, "n", "integer_above_max_value"),
        ({"max_tokens": 32769}, "max_tokens", "integer_above_max_value"),
        ({"max_completion_tokens": 10**9}, "max_completion_tokens", "integer_above_max_value"),
        ({"top_logprobs": 21}, "top_logprobs", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
        ({"stop_token_ids": list(range(65))}, "stop_token_ids", "array_above_max_length"),
        ({"temperature": "hot"}, "temperature", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"audio": {"voice": "x"}}, "audio", "unsupported_parameter"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "invalid_value"),
    ],
)
def test_caps_and_types_are_400s_naming_the_field(body: dict, param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse("chat.completions", {"model": "m", "messages": HELLO, **body}, LIMITS)
    assert (err.value.param, err.value.code) == (param, code)


def test_completions_count_choices_over_prompts() -> None:
    assert parse("completions", {"model": "m", "prompt": ["a"] * 4, "n": 4}, LIMITS).params["n"] == 4
    with pytest.raises(InvalidRequest) as err:
        parse("completions", {"model": "m", "prompt": ["a"] * 5, "n": 4}, LIMITS)
    assert err.value.param == "n"
    assert parse("completions", {"model": "m", "prompt": list(range(50))}, LIMITS).source == list(range(50))
    with pytest.raises(InvalidRequest) as err:
        parse("completions", {"model": "m", "prompt": [{"a": 1}]}, LIMITS)
    assert err.value.param == "prompt"


@pytest.mark.parametrize("field", ["model", "messages", "stream", "n", "lora_request", "request_id", "user"])
def test_sampling_params_cannot_choose_the_model(field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_sampling_params({"temperature": 0, field: "x"}, "data_source.sampling_params", LIMITS)
    assert err.value.param == f"data_source.sampling_params.{field}"
    with pytest.raises(InvalidRequest):
        generation(HELLO, {field: "x"}, LIMITS)
    assert generation(HELLO, {"max_tokens": 3, "seed": 1}, LIMITS).body("base")["model"] == "base"


@pytest.mark.parametrize("depth", [65, 50_000, 100_000])
def test_deep_json_is_refused_before_decoding(depth: int) -> None:
    for raw in (b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth + b"]" * depth, b"[" * depth):
        with pytest.raises(InvalidRequest) as err:
            check(raw, LIMITS)
        assert err.value.code == "invalid_json"
    assert depth_problem(b'["[[[[\\"' + b"[" * 200 + b'"]', 64) is None  # brackets inside strings do not count


def test_big_bodies_are_413_and_wide_ones_pass() -> None:
    with pytest.raises(PayloadTooLarge):
        check(b" " * (LIMITS.max_body_bytes + 1), LIMITS)
    check(json.dumps([[1, [2, [3]]]] * 100_000).encode(), LIMITS)
    check(b'{"a":' * 64 + b"1" + b"}" * 64, LIMITS)


def test_children_get_no_tunegate_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_ADMIN_KEY", "sk-tgadmin-secret")
    monkeypatch.setenv("TUNEGATE_DATABASE_URL", "postgresql+psycopg://u:pw@h/db")
    monkeypatch.setenv("PGPASSWORD", "pw")
    monkeypatch.setenv("TUNEGATE_LLAMA_CPP_DIR", "/opt/llama.cpp")
    engine = Settings.child_environ(database=False, VLLM_API_KEY="k")
    assert not any(k.startswith("TUNEGATE_") and k != "TUNEGATE_LLAMA_CPP_DIR" for k in engine)
    assert "PGPASSWORD" not in engine and engine["VLLM_API_KEY"] == "k" and engine["PATH"] == os.environ["PATH"]
    trainer = Settings.child_environ(database=True)
    assert "TUNEGATE_ADMIN_KEY" not in trainer and trainer["PGPASSWORD"] == "pw"


def test_a_usage_row_that_cannot_be_written_does_not_block_the_others(database_url: str) -> None:
    from serving.usage import UsageRecorder
    from storage import migrate
    from storage.accounts import Principal
    from storage.db import Database
    from storage.tables import UsageRecord
    from storage.usage import UsageStore

    db = Database(database_url)
    try:
        migrate.upgrade(db)
        store = UsageStore(db)
        recorder = UsageRecorder(store)
        who = Principal("org-a", "key_a")
        recorder.add(who, "m" * 5000, "chat.completions", {"prompt_tokens": 3, "completion_tokens": 4}, "r" * 10_000)
        # a row no database accepts (created_at beyond a 64-bit integer), between two good ones
        recorder._pending.append(
            UsageRecord(
                organization_id="org-a", api_key_id="key_a", model="m", endpoint="chat.completions", created_at=2**70
            )
        )
        recorder.add(who, "m", "chat.completions", {"prompt_tokens": 1, "completion_tokens": 1}, None)
        asyncio.run(recorder.flush())
        assert recorder.set_aside == 1 and recorder._pending == []
        totals = store.totals("org-a")
        assert sum(t.requests for t in totals) == 2 and sum(t.completion_tokens for t in totals) == 5
        recorder.add(who, "m", "chat.completions", {"prompt_tokens": 1, "completion_tokens": 1}, None)
        asyncio.run(recorder.flush())  # later rows are written as usual
        assert sum(t.requests for t in store.totals("org-a")) == 3
    finally:
        db.dispose()
