"""The Responses API (``/v1/responses``) through a real vLLM engine and the official openai client, sync and async.

One local engine of the tiny model serves the module: its own gateway on SQLite, and a twin gateway on Postgres
that uses it by URL, so the stored paths (create/retrieve/delete, streams, chains, input items, background and
cancel, the per-organization cap, the async client, usage) run on both databases; what depends only on the engine
(structured output, tool calls, 400s) runs once. Answers are checked against the chat completion of the same
conversation (greedy decoding: the translation must give the model the same prompt), every object and streamed event
is validated against the spec, and organizations never see each other's responses. The store alone is exercised on
both databases too (``test_store_on_both_databases``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

from serving.responses.chat import to_chat
from serving.responses.events import EventStream
from serving.responses.output import from_chat, skeleton
from serving.responses.request import parse
from tests.finetune_support import TINY, wait_until
from tests.serving_support import engine_gateway, guided_tools, on_database
from tests.support import LiveGateway, SpecRecorder, SpecValidator

QUESTION = "What is the capital of France?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def engine_gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    spec, guided = guided_tools(tiny_model)  # forced tool calls and JSON outputs complete on a random model
    with engine_gateway(
        tiny_model, tmp_path_factory.mktemp("responses"), **guided, TUNEGATE_BASE_MODELS=json.dumps({TINY: spec})
    ) as gateway:
        yield gateway


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gw(
    request: pytest.FixtureRequest, engine_gw: LiveGateway, tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    """The module's API on each database: SQLite is the engine's own gateway, Postgres a twin using its engine."""
    with on_database(request.param, engine_gw, tiny_model, tmp_path_factory.mktemp("responses-db")) as gateway:
        yield gateway


SQLITE_ONLY = pytest.mark.parametrize("gw", ["sqlite"], indirect=True)  # the engine's behaviour, not the store's


@pytest.fixture(scope="module")
def orgs(gw: LiveGateway) -> dict[str, tuple[str, str, str]]:
    return {"mine": gw.new_org_key("responders"), "other": gw.new_org_key("strangers")}


def async_client(gw: LiveGateway, key: str, recorder: SpecRecorder) -> openai.AsyncOpenAI:
    async def hook(response) -> None:  # noqa: ANN001 - httpx2.Response
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            await response.aread()
            name = recorder.schema_for(response.request.method, response.request.url.path, response.status_code)
            if name is not None and response.content:
                recorder.check(name, response.json(), f"{response.request.method} {response.request.url.path}")

    http = openai.DefaultAsyncHttpx2Client(event_hooks={"response": [hook]})
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, http_client=http, timeout=60)


def chat_text(client: openai.OpenAI, messages: list[dict], n: int) -> str:
    answer = client.chat.completions.create(model=TINY, messages=messages, max_tokens=n, temperature=0)
    return answer.choices[0].message.content or ""


def check_events(recorder: SpecRecorder, events: list[dict]) -> None:
    for i, event in enumerate(events):
        recorder.check("ResponseStreamEvent", event, f"event {i} ({event['type']})")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_create_matches_chat_and_is_stored(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    client = gw.client(orgs["mine"][2], recorder)
    answer = client.responses.create(
        model=TINY,
        input=QUESTION,
        instructions="Answer briefly.",
        max_output_tokens=10,
        temperature=0,
        metadata={"topic": "geo"},
    )
    assert answer.object == "response" and answer.id.startswith("resp_") and answer.model == TINY
    assert answer.status in ("completed", "incomplete") and answer.output[0].type == "message"
    expected = chat_text(
        client, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}], 10
    )
    assert answer.output_text == expected and expected
    assert answer.usage.output_tokens <= 10 and answer.usage.input_tokens > 0
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    if answer.usage.output_tokens == 10:
        assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert answer.metadata == {"topic": "geo"} and answer.store is True

    again = client.responses.retrieve(answer.id)
    assert again.output_text == answer.output_text and again.status == answer.status
    items = client.responses.input_items.list(answer.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == QUESTION
    assert "Response" in recorder.checked and "ResponseItemList" in recorder.checked

    unstored = client.responses.create(model=TINY, input=QUESTION, max_output_tokens=3, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_stream_event_sequence(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    client = gw.client(orgs["mine"][2], recorder)
    with client.responses.stream(model=TINY, input=QUESTION, max_output_tokens=8, temperature=0) as stream:
        events = [e.model_dump(exclude_unset=True) for e in stream]
    # the client's get_final_response() wants response.completed; a response cut by max_output_tokens ends with
    # response.incomplete (as OpenAI's do), whose response is the final one
    final = openai.types.responses.Response.model_validate(events[-1]["response"])
    check_events(recorder, events)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete" if final.status == "incomplete" else "response.completed",
    ]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == final.output_text == chat_text(client, [{"role": "user", "content": QUESTION}], 8)
    assert final.usage.output_tokens == 8 or final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == deltas  # stored once it ended
    assert recorder.violations == []


def test_previous_response_id_continues_the_conversation(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    client = gw.client(orgs["mine"][2], recorder)
    first = client.responses.create(model=TINY, input="Name a colour.", max_output_tokens=6, temperature=0)
    second = client.responses.create(
        model=TINY, input="And another one?", previous_response_id=first.id, max_output_tokens=6, temperature=0
    )
    assert second.previous_response_id == first.id
    history = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And another one?"},
    ]
    assert second.output_text == chat_text(client, history, 6)
    counted = client.responses.input_tokens.count(model=TINY, input="And another one?", previous_response_id=first.id)
    assert counted.object == "response.input_tokens" and counted.input_tokens == second.usage.input_tokens
    assert client.responses.input_items.list(second.id).data[0].content[0].text == "And another one?"

    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=TINY, input="x", previous_response_id=first.id, max_output_tokens=2)
    assert missing.value.body["param"] == "previous_response_id"


def test_input_items_pages_and_tenants(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    mine, other = gw.client(orgs["mine"][2], recorder), gw.client(orgs["other"][2], recorder)
    sent = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
    ]
    answer = mine.responses.create(model=TINY, input=sent, max_output_tokens=3)
    page = mine.responses.input_items.list(answer.id, limit=2, order="asc")
    assert page.has_more and [i.role for i in page.data] == ["developer", "user"]
    rest = mine.responses.input_items.list(answer.id, limit=2, order="asc", after=page.data[-1].id)
    assert not rest.has_more and [i.role for i in rest.data] == ["assistant", "user"]
    newest = mine.responses.input_items.list(answer.id, limit=1)  # default order: desc
    assert newest.data[0].id == rest.data[-1].id
    assert [i.id for i in mine.responses.input_items.list(answer.id)] == [i.id for i in reversed(page.data + rest.data)]

    for call in (
        lambda: other.responses.retrieve(answer.id),
        lambda: other.responses.delete(answer.id),
        lambda: other.responses.input_items.list(answer.id),
        lambda: other.responses.cancel(answer.id),
        lambda: other.responses.create(model=TINY, input="x", previous_response_id=answer.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    mine.responses.delete(answer.id)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(answer.id)
    assert recorder.violations == []


@SQLITE_ONLY
def test_structured_output_with_parse(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    class Color(BaseModel):
        color: Literal["red", "blue"]
        sure: bool

    client = gw.client(orgs["mine"][2], recorder)
    parsed = 0
    for seed_question in ("Pick a colour.", "Which colour?", "Red or blue?"):
        # compact guided JSON (serving_support.guided_tools): the object always closes within the budget
        answer = client.responses.parse(
            model=TINY, input=seed_question, text_format=Color, max_output_tokens=40, temperature=0
        )
        assert answer.text.format.type == "json_schema" and answer.text.format.strict is True
        assert isinstance(answer.output_parsed, Color) and answer.status == "completed"
        parsed += 1
    assert parsed == 3
    assert recorder.violations == []


@SQLITE_ONLY
def test_function_calling_round_trip(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    client = gw.client(orgs["mine"][2], recorder)
    named = client.responses.create(
        model=TINY,
        input="Weather in Paris?",
        tools=[WEATHER],
        max_output_tokens=80,
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert named.tools[0].name == "get_weather" and named.tool_choice.name == "get_weather"
    # guided decoding makes the named call whatever the model (serving_support.guided_tools)
    calls = [o for o in named.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id, named
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "Rome") and calls[0].status == "completed"
    call_id = calls[0].call_id
    follow = client.responses.create(
        model=TINY,
        previous_response_id=named.id,
        max_output_tokens=5,
        tools=[WEATHER],
        tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call_id, "output": '{"temp": 21}'}],
    )
    assert follow.output[0].type == "message" and follow.status in ("completed", "incomplete")
    assert [i.type for i in client.responses.input_items.list(follow.id)][-1] == "function_call_output"

    with client.responses.stream(
        model=TINY,
        input="Weather?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=80,
    ) as stream:
        events = [e.model_dump(exclude_unset=True) for e in stream]
    check_events(recorder, events)
    final = events[-1]["response"]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert len(done) == 1 == sum(o["type"] == "function_call" for o in final["output"]), final
    assert streamed == done[0]["arguments"] and json.loads(streamed)["city"] in ("Paris", "Rome")
    assert recorder.violations == []


def test_background_and_cancel(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    client = gw.client(orgs["mine"][2], recorder)
    queued = client.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=6, temperature=0)
    assert queued.status in ("queued", "in_progress") and queued.background is True
    done = wait_until(
        lambda: (r := client.responses.retrieve(queued.id)).status not in ("queued", "in_progress") and r,
        60,
        "the background response",
    )
    assert done.status in ("completed", "incomplete") and done.output_text
    assert client.responses.cancel(queued.id).status == done.status  # a finished one is returned as it is

    long = client.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=1500)
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    time.sleep(1)
    assert client.responses.retrieve(long.id).status == "cancelled"  # the generation's end did not overwrite it

    foreground = client.responses.create(model=TINY, input=QUESTION, max_output_tokens=2)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.cancel(foreground.id)
    assert refused.value.body["param"] == "response_id"
    assert recorder.violations == []


def test_background_keeps_its_admission_and_is_capped(gw: LiveGateway, recorder: SpecRecorder) -> None:
    """A background response holds its stream slot and token estimate until its generation ends (not only for
    its HTTP answer), and an organization has at most ``background_responses`` of them active (429)."""
    org, _, key = gw.new_org_key("background-limits")
    with gw.admin() as admin:
        admin.put(
            f"/admin/organizations/{org}/limits",
            json={"tokens_per_minute": 6000, "concurrent_streams": 1, "background_responses": 5},
        ).raise_for_status()
    client = gw.client(key, recorder)
    long = client.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=1500)
    with pytest.raises(openai.RateLimitError) as busy:  # the one stream slot is the background response's
        client.responses.create(model=TINY, input=QUESTION, max_output_tokens=2, stream=True)
    assert "concurrent streams" in busy.value.body["message"]
    after = client.responses.with_raw_response.create(model=TINY, input="x", max_output_tokens=1)
    # ~1 540 tokens (1 500 + the prompt) are still taken; the bucket refills 100 a second
    assert int(after.headers["x-ratelimit-remaining-tokens"]) < 6000 - 1000, after.headers
    assert client.responses.cancel(long.id).status == "cancelled"
    wait_until(lambda: _streams(client), 10, "the background response's stream slot back")

    org, _, key = gw.new_org_key("background-cap")
    with gw.admin() as admin:
        admin.put(f"/admin/organizations/{org}/limits", json={"background_responses": 1}).raise_for_status()
    capped = gw.client(key, recorder)
    first = capped.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=1500)
    with pytest.raises(openai.RateLimitError) as refused:
        capped.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=2)
    assert refused.value.body["param"] == "background" and refused.value.body["code"] == "rate_limit_exceeded"
    capped.responses.cancel(first.id)
    second = capped.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=2)
    done = wait_until(
        lambda: (r := capped.responses.retrieve(second.id)).status not in ("queued", "in_progress") and r,
        60,
        "the second background response",
    )
    assert done.status in ("completed", "incomplete")
    with pytest.raises(openai.NotFoundError) as unknown:  # resolved at create: a 404, never a queued failure
        capped.responses.create(model="x" * 600, input=QUESTION, background=True)
    assert unknown.value.body["code"] == "model_not_found"
    assert recorder.violations == []


def _streams(client: openai.OpenAI) -> bool:
    try:
        with client.responses.stream(model=TINY, input=QUESTION, max_output_tokens=1) as stream:
            list(stream)
        return True
    except openai.RateLimitError:
        return False


def test_async_client_every_method(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    class Pick(BaseModel):
        pick: Literal["yes", "no"]

    async def run() -> None:
        client = async_client(gw, orgs["mine"][2], recorder)
        created = await client.responses.create(model=TINY, input=QUESTION, max_output_tokens=4, temperature=0)
        assert (await client.responses.retrieve(created.id)).id == created.id
        items = await client.responses.input_items.list(created.id)
        assert items.data[0].type == "message"
        counted = await client.responses.input_tokens.count(model=TINY, input=QUESTION)
        assert counted.input_tokens == created.usage.input_tokens
        async with client.responses.stream(model=TINY, input=QUESTION, max_output_tokens=4, temperature=0) as stream:
            events = [e.model_dump(exclude_unset=True) async for e in stream]
        check_events(recorder, events)
        final = openai.types.responses.Response.model_validate(events[-1]["response"])
        assert final.output_text == created.output_text
        raw = await client.responses.create(model=TINY, input=QUESTION, max_output_tokens=4, temperature=0, stream=True)
        assert [e.type async for e in raw][-1] in ("response.completed", "response.incomplete")
        parsed = await client.responses.parse(model=TINY, input="yes?", text_format=Pick, max_output_tokens=20)
        assert isinstance(parsed.output_parsed, Pick)
        background = await client.responses.create(model=TINY, input=QUESTION, background=True, max_output_tokens=1500)
        assert (await client.responses.cancel(background.id)).status == "cancelled"
        await client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)
        await client.close()

    asyncio.run(run())
    assert recorder.violations == []


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]}, "input[0].content[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "temperature": 7}, "temperature"),
        ({"input": "x", "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": "x", "extra_body": {"kv_transfer_params": {}}}, "kv_transfer_params"),
        ({"input": "x", "background": True, "store": False}, "background"),
        ({}, "input"),
    ],
)
def test_bad_input_names_the_param(gw: LiveGateway, orgs, recorder: SpecRecorder, body: dict, param: str) -> None:
    client = gw.client(orgs["mine"][2], recorder)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=TINY, **body)  # type: ignore[call-overload]
    assert refused.value.body["param"] == param, refused.value.body
    assert recorder.violations == []


def test_unknown_model_and_usage_per_organization(gw: LiveGateway, orgs, recorder: SpecRecorder) -> None:
    client = gw.client(orgs["other"][2], recorder)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="ft:nope:org:x:12345678", input="x")
    assert missing.value.body["code"] == "model_not_found"
    answer = client.responses.create(model=TINY, input=QUESTION, max_output_tokens=3)

    from sqlmodel import select

    from storage.db import Database
    from storage.tables import UsageRecord

    db = Database(gw.database_url)
    try:

        def recorded() -> list[UsageRecord]:
            with db.session() as s:
                return list(
                    s.exec(
                        select(UsageRecord).where(
                            UsageRecord.organization_id == orgs["other"][0], UsageRecord.endpoint == "responses"
                        )
                    )
                )

        rows = wait_until(recorded, 10, "the usage row")
    finally:
        db.dispose()
    assert sum(r.completion_tokens for r in rows) == answer.usage.output_tokens
    assert sum(r.prompt_tokens for r in rows) == answer.usage.input_tokens


# --- without an engine ---------------------------------------------------------------------------------------------
def test_reasoning_items_and_summary(spec: SpecValidator) -> None:
    req = parse({"model": "m", "input": "x", "reasoning": {"effort": "low", "summary": "auto"}})
    assert to_chat(req, [])["reasoning_effort"] == "low"
    chat = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Paris.", "reasoning_content": "The capital is Paris."},
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }
    response = from_chat(req, chat, skeleton(req, "resp_x", 1, "in_progress"))
    assert spec.errors("Response", response) == []
    assert [o["type"] for o in response["output"]] == ["reasoning", "message"]
    assert response["output"][0]["summary"] == [{"type": "summary_text", "text": "The capital is Paris."}]

    stream = EventStream(req, skeleton(req, "resp_y", 1, "in_progress"))
    events = stream.start()
    for delta in ({"reasoning_content": "Think"}, {"reasoning_content": "ing."}, {"content": "Done."}):
        events += stream.feed({"choices": [{"index": 0, "delta": delta}]})
    final, last = stream.end()
    decoded = [json.loads(e.split(b"data: ", 1)[1]) for e in events + last]
    assert all(spec.errors("ResponseStreamEvent", e) == [] for e in decoded)
    kinds = [e["type"] for e in decoded]
    assert kinds.count("response.reasoning_summary_text.delta") == 2 and "response.reasoning_summary_part.done" in kinds
    assert (
        final["output"][0]["summary"][0]["text"] == "Thinking." and final["output"][1]["content"][0]["text"] == "Done."
    )


def test_items_translate_to_chat_messages() -> None:
    req = parse(
        {
            "model": "m",
            "instructions": "sys",
            "input": [
                {"role": "user", "content": "q"},
                {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "a", "output": "1"},
                {"type": "function_call_output", "call_id": "b", "output": "2"},
                {"type": "reasoning", "summary": []},
                {"role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
            ],
        }
    )
    messages = to_chat(req, [])["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["a", "b"] and messages[-1]["content"] == "done"


def test_store_on_both_databases(database_url: str) -> None:
    """The store's tenancy, chain and cancel rules on SQLite and on the real Postgres."""
    from storage import migrate
    from storage.accounts import Accounts
    from storage.db import Database
    from storage.errors import InvalidRequest, NotFound
    from storage.responses import ResponseStore

    db = Database(database_url)
    try:
        migrate.upgrade(db)
        accounts = Accounts(db)
        a, b = accounts.create_org("a").id, accounts.create_org("b").id
        store = ResponseStore(db)
        req = parse({"model": "m", "input": "one"})
        first = {**skeleton(req, "resp_1", 1, "completed"), "output": [{"id": "msg_o", "type": "message"}]}
        store.add(a, first, req.input)
        later = parse({"model": "m", "input": "two", "previous_response_id": "resp_1", "background": True})
        store.add_background(a, skeleton(later, "resp_2", 2, "queued"), later.input, cap=None, lease_s=60)
        assert [i["type"] for i in store.conversation(a, "resp_1")] == ["message", "message"]
        with pytest.raises(InvalidRequest):  # still queued: not a previous response yet
            store.conversation(a, "resp_2")
        with pytest.raises(NotFound):
            store.conversation(b, "resp_1")
        assert store.cancel(a, "resp_2", {})["status"] == "cancelled"
        assert not store.finish(a, {**skeleton(later, "resp_2", 2, "completed")})  # the cancel wins
        assert store.get(a, "resp_2")["status"] == "cancelled"
        with pytest.raises(InvalidRequest):
            store.cancel(a, "resp_1", {})
        with pytest.raises(NotFound):
            store.get(b, "resp_2")
        with pytest.raises(NotFound):
            store.delete(b, "resp_1")
        store.delete(a, "resp_2")
        with pytest.raises(NotFound):
            store.input_items(a, "resp_2", limit=10, after=None, order="asc")
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "reasoning", "summary": [{"junk": 1}, 5, None]}, "input[0].summary[0]"),
        ({"type": "reasoning"}, "input[0].summary"),
        ({"type": "reasoning", "summary": [], "content": [[1, 2]]}, "input[0].content[0]"),
        ({"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}] * 65}, "input[0].summary"),
        ({"type": "reasoning", "summary": [{"type": "summary_text", "text": "x" * 300_000}]}, "input[0].summary"),
        (
            {"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png", "detail": "ultra"}]},
            "input[0].content[0].detail",
        ),
    ],
)
def test_input_items_checked_by_shape_and_size(item: dict, param: str) -> None:
    from storage.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        parse({"model": "m", "instructions": "be nice", "input": [item]})
    assert refused.value.param == param, refused.value.message
    kept = parse(
        {
            "model": "m",
            "input": [
                {
                    "type": "reasoning",
                    "encrypted_content": "opaque",
                    "summary": [{"type": "summary_text", "text": "s"}],
                    "content": [{"type": "reasoning_text", "text": "r"}],
                }
            ],
        }
    ).input[0]
    assert {k: v for k, v in kept.items() if k != "id"} == {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "s"}],
        "content": [{"type": "reasoning_text", "text": "r"}],
    }


def test_truncation_and_params_of_translated_items() -> None:
    from serving.responses.chat import _item_param, _to_chat
    from storage.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        parse({"model": "m", "input": "hi", "truncation": "weird"})
    assert refused.value.param == "truncation"
    assert parse({"model": "m", "input": "hi", "truncation": "auto"}).truncation == "auto"
    req = parse(
        {
            "model": "m",
            "instructions": "sys",
            "input": [
                {"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]},
                {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "a", "output": "1"},
            ],
        }
    )
    history = [
        {
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": "before"}],
        }
    ]
    _, origins = _to_chat(req, history)  # system, history user, input[0] user, assistant(2 calls), tool
    assert _item_param("messages[0].content", origins) == "instructions"
    assert _item_param("messages[1].content", origins) == "previous_response_id"
    assert _item_param("messages[2].content[0].image_url.detail", origins) == "input[0].content[0].detail"
    assert _item_param("messages[2].content[0].image_url.url", origins) == "input[0].content[0].image_url"
    assert _item_param("messages[3].tool_calls[1].function.arguments", origins) == "input[2].arguments"
    assert _item_param("messages[3].tool_calls[0].id", origins) == "input[1].call_id"
    assert _item_param("messages[4].content", origins) == "input[3].output"
    assert _item_param("messages[4].tool_call_id", origins) == "input[3].call_id"
    assert _item_param("messages", origins) is None


def test_background_leases_caps_and_chain_size(database_url: str) -> None:
    """A lapsed lease reads as failed (the gateway restarted), the per-organization cap is a 429, and a chain
    larger than its byte budget is a 400 naming previous_response_id before anything is loaded."""
    from storage import migrate
    from storage.accounts import Accounts
    from storage.db import Database
    from storage.errors import InvalidRequest, RateLimited
    from storage.responses import ResponseStore

    db = Database(database_url)
    try:
        migrate.upgrade(db)
        org = Accounts(db).create_org("a").id
        store = ResponseStore(db)
        back = parse({"model": "m", "input": "x", "background": True})
        store.add_background(org, skeleton(back, "resp_live", 1, "queued"), back.input, cap=2, lease_s=60)
        store.add_background(org, skeleton(back, "resp_dead", 1, "queued"), back.input, cap=2, lease_s=-1)
        assert store.renew(org, "resp_live", 60) == "queued" and store.renew(org, "resp_nope", 60) is None
        dead = store.get(org, "resp_dead")  # nobody renewed it: its process is gone
        assert dead["status"] == "failed" and dead["error"]["code"] == "server_error"
        assert "restarted" in dead["error"]["message"] and "_lease" not in dead
        assert "_lease" not in store.get(org, "resp_live") and store.get(org, "resp_live")["status"] == "queued"
        store.add_background(org, skeleton(back, "resp_2", 1, "queued"), back.input, cap=2, lease_s=60)
        with pytest.raises(RateLimited) as refused:  # resp_live and resp_2 are active; the dead one no longer counts
            store.add_background(org, skeleton(back, "resp_3", 1, "queued"), back.input, cap=2, lease_s=60)
        assert refused.value.code == "rate_limit_exceeded"
        store.finish(org, {**skeleton(back, "resp_live", 1, "in_progress")})
        assert store.renew(org, "resp_live", 60) == "in_progress"  # the lease survived queued → in_progress
        assert store.cancel(org, "resp_live", {})["status"] == "cancelled"
        assert store.renew(org, "resp_live", 60) == "cancelled"  # what a running task sees: it stops

        big = parse({"model": "m", "input": "y" * 10_000})
        store.add(org, {**skeleton(big, "resp_big1", 1, "completed"), "output": []}, big.input)
        chained = parse({"model": "m", "input": "y" * 10_000, "previous_response_id": "resp_big1"})
        store.add(org, {**skeleton(chained, "resp_big2", 2, "completed"), "output": []}, chained.input)
        assert len(store.conversation(org, "resp_big2", max_bytes=30_000)) == 2
        with pytest.raises(InvalidRequest) as large:
            store.conversation(org, "resp_big2", max_bytes=15_000)  # each response alone fits, the chain does not
        assert large.value.param == "previous_response_id" and large.value.code == "conversation_too_large"
        assert store.conversation(org, "resp_dead") == back.input  # a failed response can be continued
    finally:
        db.dispose()


def test_service_background_admission_cancel_elsewhere_and_unstored_follow_up(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Without an engine (a fake chat proxy): a background response holds its admission until its generation ends,
    a cancel written by another process aborts the generation within a poll, an unknown model is a 404 before
    anything is stored, and ``store: false`` may continue a stored response."""
    from serving.responses import service as module
    from serving.responses.service import ResponsesService
    from storage import migrate
    from storage.accounts import Accounts, Principal
    from storage.db import Database
    from storage.errors import NotFound
    from storage.responses import ResponseStore
    from storage.settings import RequestLimits

    monkeypatch.setattr(module, "POLL_S", 0.05)
    answer = {
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }

    class Pool:
        async def resolve(self, org: str, model: str) -> None:
            if model != "m":
                raise NotFound(f"The model '{model}' does not exist.", param="model", code="model_not_found")

    class Chat:
        limits, pool = RequestLimits(), Pool()
        started, aborted, seen = asyncio.Event(), asyncio.Event(), []

        async def create(self, principal: Principal, endpoint: str, chat: dict, usage_as: str) -> bytes:
            self.seen.append(chat)
            if chat["messages"][-1]["content"] == "long":
                self.started.set()
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.aborted.set()
                    raise
            return json.dumps(answer).encode()

    db = Database(f"sqlite:///{tmp_path / 'r.db'}")
    migrate.upgrade(db)
    who = Principal(Accounts(db).create_org("a").id, "key")
    store, chat = ResponseStore(db), Chat()
    service = ResponsesService(chat, store)  # type: ignore[arg-type]
    released: list[str] = []

    async def run() -> None:
        long = await service.respond(
            who, {"model": "m", "input": "long", "background": True}, hold=lambda: lambda: released.append("long")
        )
        await asyncio.wait_for(chat.started.wait(), 5)
        assert released == []  # still generating: the admission is held
        store.cancel(who.organization_id, long["id"], {})  # as another gateway process would
        await asyncio.wait_for(chat.aborted.wait(), 5)  # the engine request was closed
        for _ in range(100):
            if released:
                break
            await asyncio.sleep(0.02)
        assert released == ["long"] and store.get(who.organization_id, long["id"])["status"] == "cancelled"

        with pytest.raises(NotFound) as missing:
            await service.respond(
                who,
                {"model": "x" * 600, "input": "q", "background": True},
                hold=lambda: lambda: released.append("never"),
            )
        assert missing.value.code == "model_not_found" and "never" not in released

        first = await service.respond(who, {"model": "m", "input": "My name is Ann."})
        follow = await service.respond(
            who, {"model": "m", "input": "Name?", "store": False, "previous_response_id": first["id"]}
        )
        assert follow["previous_response_id"] == first["id"]
        assert [m["content"] for m in chat.seen[-1]["messages"]] == ["My name is Ann.", "ok", "Name?"]
        with pytest.raises(NotFound):
            store.get(who.organization_id, follow["id"])

    try:
        asyncio.run(run())
    finally:
        db.dispose()


def test_a_held_admission_settles_only_when_released() -> None:
    """The limiter side of a background response: it takes a stream slot, and a held admission is not settled
    when its HTTP answer ends (the middleware's finish) but when the holder releases it."""
    from gateway.ratelimit.counters import Bucket, Slot, Verdict
    from gateway.ratelimit.limiter import Admission, Limiter, estimate_tokens
    from storage.settings import RequestLimits, Settings

    assert estimate_tokens(b'{"background": true, "max_output_tokens": 10}', RequestLimits()) == (22, True)
    assert estimate_tokens(b'{"max_output_tokens": 10}', RequestLimits())[1] is False
    limiter = Limiter(Settings(), None)  # type: ignore[arg-type]
    settled: list[tuple] = []

    async def record(buckets: list, slots: list, member: str) -> None:
        settled.append((buckets, slots))

    limiter._settle = record  # type: ignore[method-assign]

    async def run() -> None:
        admission = Admission(
            [Bucket("o:tokens", 6000, 1500)], [Slot("o:streams", 1)], "m", Verdict(None, 0, [0]), estimate=1500
        )
        release = limiter.hold(admission)
        limiter.finish(admission)  # the HTTP answer is over: nothing happens yet
        await asyncio.sleep(0)
        assert settled == []
        admission.used = 40  # the generation's usage (report_usage in the task's context)
        release()
        await asyncio.sleep(0.01)
        [(buckets, slots)] = settled
        assert [b.cost for b in buckets] == [40 - 1500] and slots == admission.slots

    asyncio.run(run())
