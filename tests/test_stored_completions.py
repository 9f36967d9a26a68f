"""Stored chat completions (``store: true``) through a real vLLM engine and the official client, sync and async:
every stored-completion method, spec-validated; tenant isolation; distillation into a fine-tune file a job accepts;
an eval run over a ``stored_completions`` source. The store's queries alone also run on Postgres.

One engine serves the module (it takes ~30 s to start): its own gateway on SQLite, and a twin on Postgres that uses
it by URL, so the stored-completion methods, tenant isolation and the async client run on both databases.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import openai
import pytest
from sqlalchemy.exc import DisconnectionError

from serving.request_body import EngineRequest
from serving.stored import Capture, StoredCompletionWriter
from storage import migrate
from storage.accounts import Accounts
from storage.db import Database
from storage.stored_completions import Selection, StoredCompletions
from storage.tables import StoredCompletion
from tests.finetune_support import TINY, wait_for, wait_until
from tests.serving_support import engine_gateway, on_database
from tests.support import LiveGateway, SpecRecorder

GREEDY = {"temperature": 0, "max_tokens": 8, "min_tokens": 4}  # min_tokens: never an empty answer to store


@pytest.fixture(scope="module")
def engine_gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    with engine_gateway(tiny_model, tmp_path_factory.mktemp("stored")) as gateway:
        yield gateway


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gw(
    request: pytest.FixtureRequest, engine_gw: LiveGateway, tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    """The module's API on each database: SQLite is the engine's own gateway, Postgres a twin using its engine."""
    with on_database(request.param, engine_gw, tiny_model, tmp_path_factory.mktemp("stored-db")) as gateway:
        yield gateway


SQLITE_ONLY = pytest.mark.parametrize("gw", ["sqlite"], indirect=True)  # not a storage path: one database is enough


@pytest.fixture(scope="module")
def key(gw: LiveGateway) -> str:
    return gw.new_org_key("storers")[2]


def ask(client: openai.OpenAI, text: str, min_tokens: int = GREEDY["min_tokens"], **kwargs: object):  # noqa: ANN201
    return client.chat.completions.create(
        model=TINY,
        messages=[{"role": "user", "content": text}],
        extra_body={"min_tokens": min_tokens} if min_tokens else None,
        temperature=GREEDY["temperature"],
        max_tokens=GREEDY["max_tokens"],
        **kwargs,
    )


def test_every_stored_completion_method(gw: LiveGateway, key: str, recorder: SpecRecorder) -> None:
    client = gw.client(key, recorder)
    stored = [
        ask(client, f"Question number {i}?", store=True, metadata={"topic": "geo", "i": str(i)}) for i in range(3)
    ]
    ask(client, "not stored, explicitly", store=False)
    ask(client, "not stored by default")
    chunks = list(
        client.chat.completions.create(
            model=TINY,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Stream it"}],
            stream=True,
            store=True,
            metadata={"topic": "stream"},
            stream_options={"include_usage": True},
            extra_body={"min_tokens": 4},
            temperature=0,
            max_tokens=8,
        )
    )
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed_id = chunks[0].id

    # list: oldest first by default, only store=true ones, every object spec-valid (the recorder)
    everything = client.chat.completions.list()
    assert [c.id for c in everything.data] == [c.id for c in stored] + [streamed_id]
    assert not everything.has_more
    assert [c.id for c in client.chat.completions.list(order="desc").data] == [streamed_id] + [c.id for c in stored][
        ::-1
    ]
    page = client.chat.completions.list(limit=2)
    assert [c.id for c in page.data] == [stored[0].id, stored[1].id] and page.has_more
    assert [c.id for c in client.chat.completions.list(limit=2, after=stored[1].id).data] == [stored[2].id, streamed_id]
    assert [c.id for c in client.chat.completions.list(limit=1)] == [c.id for c in stored] + [
        streamed_id
    ]  # auto-paging
    assert [c.id for c in client.chat.completions.list(metadata={"topic": "geo"}).data] == [c.id for c in stored]
    assert [c.id for c in client.chat.completions.list(metadata={"topic": "geo", "i": "1"}).data] == [stored[1].id]
    assert [c.id for c in client.chat.completions.list(model=TINY).data][-1] == streamed_id
    assert client.chat.completions.list(model="some-other-model").data == []

    # retrieve: the answer as it was given, with its metadata and the request's sampling fields
    got = client.chat.completions.retrieve(stored[1].id)
    assert got.choices[0].message.content == stored[1].choices[0].message.content
    assert got.usage.completion_tokens == stored[1].usage.completion_tokens and got.model == TINY
    assert got.metadata == {"topic": "geo", "i": "1"} and got.temperature == 0
    streamed = client.chat.completions.retrieve(streamed_id)  # a stream, folded into one chat.completion
    assert streamed.choices[0].message.content == streamed_text and streamed_text
    assert streamed.choices[0].finish_reason == chunks[-2].choices[0].finish_reason
    assert streamed.usage.completion_tokens == chunks[-1].usage.completion_tokens

    # messages: the request's, with ids, paged
    messages = client.chat.completions.messages.list(streamed_id)
    assert [(m.id, m.role, m.content) for m in messages.data] == [
        (f"{streamed_id}-0", "system", "Be brief."),
        (f"{streamed_id}-1", "user", "Stream it"),
    ]
    one = client.chat.completions.messages.list(streamed_id, limit=1)
    assert [m.content for m in one.data] == ["Be brief."] and one.has_more
    assert [
        m.content for m in client.chat.completions.messages.list(streamed_id, limit=1, after=one.data[0].id).data
    ] == ["Stream it"]
    assert [m.role for m in client.chat.completions.messages.list(streamed_id, order="desc").data] == ["user", "system"]

    # update: metadata replaced, and the filters see it
    updated = client.chat.completions.update(stored[0].id, metadata={"topic": "history"})
    assert updated.metadata == {"topic": "history"}
    assert [c.id for c in client.chat.completions.list(metadata={"topic": "history"}).data] == [stored[0].id]
    assert [c.id for c in client.chat.completions.list(metadata={"topic": "geo"}).data] == [c.id for c in stored[1:]]

    # delete: gone from retrieve, messages and list
    deleted = client.chat.completions.delete(stored[2].id)
    assert deleted.deleted and deleted.id == stored[2].id and deleted.object == "chat.completion.deleted"
    for call in (
        lambda: client.chat.completions.retrieve(stored[2].id),
        lambda: client.chat.completions.messages.list(stored[2].id),
        lambda: client.chat.completions.delete(stored[2].id),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["param"] == "completion_id"
    assert stored[2].id not in [c.id for c in client.chat.completions.list()]
    assert {"ChatCompletionList", "ChatCompletionMessageList", "ChatCompletionDeleted"} <= set(recorder.checked)


def test_another_organization_sees_nothing(gw: LiveGateway, key: str, recorder: SpecRecorder) -> None:
    mine = ask(gw.client(key), "mine alone", store=True, metadata={"owner": "a"})
    gw.client(key).chat.completions.retrieve(mine.id)  # stored (and flushed) for its organization
    other = gw.client(gw.new_org_key("snoopers")[2], recorder)
    for call in (
        lambda: other.chat.completions.retrieve(mine.id),
        lambda: other.chat.completions.update(mine.id, metadata={"owner": "b"}),
        lambda: other.chat.completions.delete(mine.id),
        lambda: other.chat.completions.messages.list(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.chat.completions.list().data == []
    assert other.chat.completions.list(metadata={"owner": "a"}).data == []
    with pytest.raises(openai.BadRequestError) as err:  # another organization's completion is no anchor
        other.chat.completions.list(after=mine.id)
    assert err.value.body["param"] == "after"
    with pytest.raises(openai.BadRequestError) as err:
        other.post("/chat/completions/distill", body={"metadata": {"owner": "a"}}, cast_to=openai.types.FileObject)
    assert err.value.body["code"] == "no_stored_completions"
    assert gw.client(key).chat.completions.retrieve(mine.id).metadata == {"owner": "a"}  # untouched


@SQLITE_ONLY
def test_bad_store_fields_are_400s_naming_them(gw: LiveGateway, key: str, recorder: SpecRecorder) -> None:
    client = gw.client(key, recorder)
    before = len(client.chat.completions.list(limit=100).data)
    for extra, param in (
        ({"store": "yes"}, "store"),
        ({"store": True, "metadata": {"k": 1}}, "metadata"),
        ({"store": True, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"store": True, "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"store": True, "metadata": {"k": "v" * 513}}, "metadata"),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model=TINY, messages=[{"role": "user", "content": "x"}], max_tokens=2, extra_body=extra
            )
        assert err.value.body["param"] == param, extra
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.update("chatcmpl-nope", metadata={"k": 2})  # type: ignore[dict-item]
    assert err.value.body["param"] == "metadata"
    assert len(client.chat.completions.list(limit=100).data) == before


def test_async_client(gw: LiveGateway, key: str) -> None:
    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        made = await client.chat.completions.create(
            model=TINY,
            messages=[{"role": "user", "content": "async?"}],
            store=True,
            metadata={"via": "async"},
            max_tokens=6,
            temperature=0,
            extra_body={"min_tokens": 2},
        )
        listed = await client.chat.completions.list(metadata={"via": "async"})
        assert [c.id for c in listed.data] == [made.id]
        got = await client.chat.completions.retrieve(made.id)
        assert got.choices[0].message.content == made.choices[0].message.content
        assert (await client.chat.completions.update(made.id, metadata={"via": "async2"})).metadata == {"via": "async2"}
        messages = await client.chat.completions.messages.list(made.id)
        assert [m.content for m in messages.data] == ["async?"]
        assert (await client.chat.completions.delete(made.id)).deleted
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.retrieve(made.id)
        await client.close()

    asyncio.run(main())


@SQLITE_ONLY
@pytest.mark.slow
def test_distill_into_a_file_a_fine_tuning_job_accepts(gw: LiveGateway, key: str, recorder: SpecRecorder) -> None:
    client = gw.client(key, recorder)
    made = [ask(client, f"Teach me fact {i}.", store=True, metadata={"set": "distill"}) for i in range(11)]
    ask(client, "not this one", store=True, metadata={"set": "other"})
    file = client.post(
        "/chat/completions/distill",
        body={"metadata": {"set": "distill"}, "model": TINY},
        cast_to=openai.types.FileObject,
    )
    assert file.purpose == "fine-tune" and file.status == "processed" and file.filename == "distilled.jsonl"
    lines = [json.loads(line) for line in client.files.content(file.id).text.splitlines()]
    assert [line["messages"] for line in lines] == [
        [
            {"role": "user", "content": f"Teach me fact {i}."},
            {"role": "assistant", "content": m.choices[0].message.content},
        ]
        for i, m in enumerate(made)
    ]
    few = client.post(
        "/chat/completions/distill",
        body={"metadata": {"set": "distill"}, "limit": 3, "filename": "three.jsonl"},
        cast_to=openai.types.FileObject,
    )
    assert few.filename == "three.jsonl" and len(client.files.content(few.id).text.splitlines()) == 3
    with pytest.raises(openai.BadRequestError) as err:
        client.post(
            "/chat/completions/distill",
            body={"metadata": {"set": "distill"}, "bogus": 1},
            cast_to=openai.types.FileObject,
        )
    assert err.value.body["param"] == "bogus"
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    done = wait_for(client, job.id, ("succeeded",), timeout=600)
    assert done.trained_tokens and done.fine_tuned_model


@SQLITE_ONLY
@pytest.mark.slow
def test_eval_run_over_stored_completions(gw: LiveGateway, key: str, recorder: SpecRecorder) -> None:
    """Greedy regeneration of stored greedy answers reproduces them: every item passes an exact-match check."""
    client = gw.client(key, recorder)
    for i in range(3):
        ask(client, f"Evaluate me {i}", store=True, metadata={"set": "eval"}, min_tokens=0)
    evaluation = client.evals.create(
        name="replay",
        data_source_config={"type": "stored_completions", "metadata": {"set": "eval"}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "same",
                "input": "{{sample.output_text}}",
                "reference": "{{item.output_text}}",
                "operation": "eq",
            }
        ],
    )
    assert evaluation.data_source_config.type == "stored_completions"
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": TINY,
            "source": {"type": "stored_completions", "metadata": {"set": "eval"}, "limit": 2},
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": GREEDY["max_tokens"]},
        },
    )
    done = wait_until(
        lambda: (
            (r := client.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status in ("completed", "failed") and r
        ),
        300,
        "the eval run",
    )
    assert done.status == "completed", done.error
    assert done.result_counts.total == 2 and done.result_counts.passed == 2, done.result_counts
    items = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id).data
    assert sorted(i.datasource_item["input"][0]["content"] for i in items) == ["Evaluate me 0", "Evaluate me 1"]
    # tunegate extension: a jsonl run grades the stored answers themselves (no generation); unrecorded, since the
    # spec's jsonl sources are files only
    given = gw.client(key).evals.runs.create(
        evaluation.id,
        data_source={"type": "jsonl", "source": {"type": "stored_completions", "metadata": {"set": "eval"}}},
    )
    given = wait_until(
        lambda: (
            (r := gw.client(key).evals.runs.retrieve(given.id, eval_id=evaluation.id)).status in ("completed", "failed")
            and r
        ),
        120,
        "the jsonl run",
    )
    assert given.status == "completed" and given.result_counts.passed == 3, given.result_counts
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": TINY,
                "source": {"type": "stored_completions", "limit": 0},
                "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            },
        )
    assert err.value.body["param"] == "data_source.source.limit"


# --- without a gateway ------------------------------------------------------------------------------------------------
def test_store_queries_on_each_database(database_url: str) -> None:
    db = Database(database_url)
    migrate.upgrade(db)
    accounts = Accounts(db)
    org, other = accounts.create_org("a").id, accounts.create_org("b").id
    store = StoredCompletions(db)
    rows = [
        StoredCompletion(
            id=f"chatcmpl-{n:03d}",
            organization_id=org if n != 7 else other,
            model="m1" if n % 2 else "m2",
            created_at=1000 + n,
            metadata_={'ü.k"': "v", "n": str(n % 3)},
            messages=[{"role": "user", "content": str(n)}],
            response={"id": f"chatcmpl-{n:03d}"},
        )
        for n in range(10)
    ]
    store.add_many(rows)

    def ids(selection: Selection, limit: int | None = None) -> list[str]:
        return [r.id for r in store.select(org, selection, limit, page=2)]

    mine = [r.id for r in rows if r.organization_id == org]
    assert ids(Selection({})) == mine
    assert ids(Selection({'ü.k"': "v", "n": "0"})) == ["chatcmpl-000", "chatcmpl-003", "chatcmpl-006", "chatcmpl-009"]
    assert ids(Selection({}, model="m1")) == ["chatcmpl-001", "chatcmpl-003", "chatcmpl-005", "chatcmpl-009"]
    assert ids(Selection({}, created_after=1003, created_before=1008)) == [f"chatcmpl-{n:03d}" for n in (3, 4, 5, 6, 8)]
    assert ids(Selection({}), limit=3) == mine[:3]
    page = store.list(org, Selection({"n": "1"}), limit=2, after=None, ascending=False)
    assert [r.id for r in page.items] == ["chatcmpl-004", "chatcmpl-001"] and not page.has_more
    assert [r.id for r in store.select(other, Selection({"n": "1"}))] == ["chatcmpl-007"]
    db.dispose()


def test_a_stream_folds_into_one_completion() -> None:
    request = EngineRequest(
        "chat.completions",
        TINY,
        True,
        False,
        [{"role": "user", "content": "hi"}],
        {"temperature": 0.5, "tools": [{"type": "function", "function": {"name": "f"}}]},
    )
    kept = Capture("org", request, {"k": "v"})
    head = {"id": "chatcmpl-x", "model": TINY, "created": 5, "object": "chat.completion.chunk"}
    for delta, finish in (
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({"content": "lo"}, None),
        (
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "tool_calls"),
    ):
        kept.feed({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    kept.usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    row = kept.row(kept.streamed())
    assert row.response["choices"] == [
        {
            "index": 0,
            "logprobs": None,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "Hello",
                "refusal": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
        }
    ]
    assert (row.id, row.model, row.created_at, row.metadata_) == ("chatcmpl-x", TINY, 5, {"k": "v"})
    assert row.request["temperature"] == 0.5 and row.response["usage"]["total_tokens"] == 7
    assert time.time() > row.created_at


def test_what_waits_for_the_database_is_bounded_in_bytes(database_url: str) -> None:
    """While the database is away stored completions wait, the oldest set aside past the byte budget; once it is
    back, what waited is written."""
    db = Database(database_url)
    migrate.upgrade(db)
    org = Accounts(db).create_org("w").id
    store = StoredCompletions(db)
    away = {"yes": True}

    class Flaky:
        def add_many(self, rows: list[StoredCompletion]) -> None:
            if away["yes"]:
                raise DisconnectionError("the database is away")
            store.add_many(rows)

    writer = StoredCompletionWriter(Flaky(), max_pending_bytes=20_000)  # type: ignore[arg-type]

    def row(n: int) -> StoredCompletion:
        return StoredCompletion(
            id=f"chatcmpl-w{n:03d}",
            organization_id=org,
            model="m",
            created_at=n,
            messages=[{"role": "user", "content": "x" * 4000}],
            response={"id": n},
        )

    async def main() -> None:
        for n in range(10):
            writer.queue(row(n))
            await writer.flush()  # fails: the rows wait
        assert 0 < writer._held <= 20_000 and writer.set_aside == 6
        away["yes"] = False
        await writer.flush()
        assert writer._held == 0 and writer._pending == []

    asyncio.run(main())
    assert [r.id for r in store.select(org, Selection({}))] == [f"chatcmpl-w{n:03d}" for n in range(6, 10)]
    db.dispose()
