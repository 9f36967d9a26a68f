"""``/v1/batches`` through the official client, against one gateway with a real vLLM engine (tiny model) on
Postgres and a standalone worker process: the objects validate against the spec, bad lines land in the error file
while the rest succeed, organizations are isolated, cancel and the completion window end a batch with its partial
output, and a 2 000-request batch survives kill -9 of its worker with every custom_id answered exactly once.
The store's paths (chat, completions and Responses batches, isolation, cancel) run on SQLite too: a twin gateway
(and its own worker) that uses the same engine by URL.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from storage.errors import NotFound
from tests.finetune_support import TINY, wait_until
from tests.serving_support import shared_serving_env, twin_gateway, wait_engines_ready
from tests.support import LiveGateway, SpecRecorder, SpecValidator

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
FINAL = ("completed", "failed", "expired", "cancelled")
# long answers (the model never stops before max_tokens): a batch of these is still running when the test acts
LONG = {"max_tokens": 200, "ignore_eos": True}


def chat_line(custom_id: str, content: str, **params: Any) -> dict[str, Any]:
    body = {"model": TINY, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body | params}


def jsonl(rows: list[Any]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def upload_batch_file(client: openai.OpenAI, rows: list[Any], purpose: str = "batch") -> str:
    return client.files.create(file=("requests.jsonl", io.BytesIO(jsonl(rows))), purpose=purpose).id  # type: ignore[arg-type]


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 240) -> Any:
    return wait_until(
        lambda: (b := client.batches.retrieve(batch_id)).status in FINAL and b, timeout, f"batch {batch_id} to finish"
    )


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


class WorkerProcess:
    """The module's ``tunegate worker``: one at a time, killable."""

    def __init__(self, gw: LiveGateway) -> None:
        self.gw, self.proc, self.n = gw, None, 0

    def start(self) -> subprocess.Popen[bytes]:
        self.n += 1
        self.proc = self.gw.spawn_worker(f"batch-worker-{self.n}")
        return self.proc

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the worker is not running"
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# no embedded worker (the module's worker is a process of its own, to be killed), small chunks, a 3 s window
SETTINGS = {
    "TUNEGATE_WORKER__EMBEDDED": "false",
    "TUNEGATE_BATCHES__CHUNK_LINES": "32",
    "TUNEGATE_BATCHES__COMPLETION_WINDOWS": json.dumps({"24h": 86400, "3s": 3}),
}


@pytest.fixture(scope="module")
def engine_gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """Postgres, the module's one engine."""
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    gateway = LiveGateway(tmp_path_factory.mktemp("batches"), url, **shared_serving_env(tiny_model, **SETTINGS))
    gateway.start()
    try:
        wait_engines_ready(gateway)
        yield gateway
    finally:
        gateway.stop()
        drop()


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def gw(
    request: pytest.FixtureRequest, engine_gw: LiveGateway, tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveGateway]:
    """Each database: Postgres is the engine's own gateway, SQLite a twin that uses its engine by URL."""
    if request.param == "postgres":
        yield engine_gw
        return
    data_dir = tmp_path_factory.mktemp("batches-sqlite")
    with twin_gateway(engine_gw, tiny_model, data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **SETTINGS) as gateway:
        yield gateway


POSTGRES_ONLY = pytest.mark.parametrize("gw", ["postgres"], indirect=True)  # not the store's paths, or slow


@pytest.fixture(scope="module")
def worker(gw: LiveGateway) -> Iterator[WorkerProcess]:
    w = WorkerProcess(gw)
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def org(gw: LiveGateway) -> tuple[str, str]:
    org_id, _, key = gw.new_org_key("batcher")
    return org_id, key


@pytest.fixture
def client(gw: LiveGateway, org: tuple[str, str], recorder: SpecRecorder) -> openai.OpenAI:
    return gw.client(org[1], recorder)


def test_a_chat_batch_answers_good_lines_and_reports_bad_ones(
    gw: LiveGateway, worker: WorkerProcess, spec: SpecValidator, recorder: SpecRecorder
) -> None:
    org_id, _, key = gw.new_org_key("lines")
    client = gw.client(key, recorder)
    good = [chat_line(f"good-{i}", f"Say something about number {i}.") for i in range(6)]
    rows: list[Any] = [
        *good[:3],
        "this is not json",
        {"method": "POST", "url": CHAT, "body": good[0]["body"]},  # no custom_id
        chat_line("wrong-url", "hi") | {"url": COMPLETIONS},
        chat_line("good-1", "the same custom_id again"),
        chat_line("unknown-param", "hi", lora_request={"x": 1}),  # refused by the allow-list: a 400 in its line
        chat_line("no-such-model", "hi", model="ft:tiny-chat:someone-else:x:12345678"),
        *good[3:],
    ]
    file_id = upload_batch_file(client, rows)
    batch = client.batches.create(
        input_file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={"run": "nightly"}
    )
    assert batch.status == "validating" and batch.metadata == {"run": "nightly"}
    assert batch.request_counts.total == 0 and batch.expires_at >= batch.created_at + 86400 - 1
    done = finished(client, batch.id)
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 6, 6)
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.model == TINY
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at

    output = read_lines(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == [f"good-{i}" for i in range(6)]  # input order
    for o in output:
        assert o["error"] is None and o["id"].startswith("batch_req_") and o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["model"] == TINY and body["choices"][0]["message"]["content"]
        assert not spec.errors("CreateChatCompletionResponse", body), spec.errors("CreateChatCompletionResponse", body)

    error_lines = read_lines(client, done.error_file_id)
    assert len(error_lines) == 6
    nameless = [e["error"]["code"] for e in error_lines if e["custom_id"] is None]
    assert nameless == ["invalid_json", "missing_custom_id"]
    errors = {e["custom_id"]: e for e in error_lines if e["custom_id"] is not None}
    assert errors["wrong-url"]["error"]["code"] == "mismatched_url" and errors["wrong-url"]["response"] is None
    assert errors["good-1"]["error"]["code"] == "duplicate_custom_id"
    refused = errors["unknown-param"]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "lora_request"
    assert not spec.errors("ErrorResponse", refused["body"])
    assert errors["no-such-model"]["response"]["status_code"] == 404
    files = {f.id: f for f in client.files.list(purpose="batch_output")}
    assert {done.output_file_id, done.error_file_id} <= set(files)

    with gw.admin() as admin:  # usage is counted for the organization (and the key that created the batch)
        totals = admin.get("/admin/usage", params={"organization_id": org_id}).raise_for_status().json()["data"]
    assert sum(t["requests"] for t in totals) == 6
    assert sum(t["prompt_tokens"] for t in totals) == done.usage.input_tokens > 0
    assert sum(t["completion_tokens"] for t in totals) == done.usage.output_tokens > 0


def test_a_completions_batch(
    gw: LiveGateway, worker: WorkerProcess, client: openai.OpenAI, spec: SpecValidator
) -> None:
    rows = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": COMPLETIONS,
            "body": {"model": TINY, "prompt": f"Once upon a time {i}", "max_tokens": 5},
        }
        for i in range(3)
    ]
    done = finished(
        client,
        client.batches.create(
            input_file_id=upload_batch_file(client, rows), endpoint=COMPLETIONS, completion_window="24h"
        ).id,
    )
    assert done.status == "completed" and done.request_counts.completed == 3 and done.error_file_id is None
    for o in read_lines(client, done.output_file_id):
        assert o["response"]["body"]["object"] == "text_completion"
        assert not spec.errors("CreateCompletionResponse", o["response"]["body"])


@POSTGRES_ONLY
def test_create_checks_its_fields_and_list_pages(
    gw: LiveGateway, worker: WorkerProcess, org: tuple[str, str], client: openai.OpenAI
) -> None:
    file_id = upload_batch_file(client, [chat_line("x", "hi")])
    for kwargs, param in [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"metadata": {"k": "v" * 600}}, "metadata.k"),
    ]:
        with pytest.raises(openai.BadRequestError) as bad:
            client.batches.create(**({"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"} | kwargs))
        assert bad.value.body["param"] == param, bad.value.body
    tuning = upload_batch_file(
        client,
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 10,
        "fine-tune",
    )
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(input_file_id=tuning, endpoint=CHAT, completion_window="24h")
    assert bad.value.body["code"] == "invalid_file_purpose"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")

    made = [client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    listed = [b.id for b in client.batches.list(limit=1)]  # the client pages through all of them
    assert listed[:3] == made[::-1] and len(listed) == len(set(listed))
    for batch_id in made:
        assert finished(client, batch_id).status == "completed"
    with pytest.raises(openai.BadRequestError):  # a finished batch cannot be cancelled
        client.batches.cancel(made[0])


def test_another_organization_sees_nothing(
    gw: LiveGateway, worker: WorkerProcess, client: openai.OpenAI, recorder: SpecRecorder
) -> None:
    mine = finished(
        client,
        client.batches.create(
            input_file_id=upload_batch_file(client, [chat_line("a", "hi")]), endpoint=CHAT, completion_window="24h"
        ).id,
    )
    other = gw.client(gw.new_org_key("other")[2], recorder)
    for call in (
        lambda: other.batches.retrieve(mine.id),
        lambda: other.batches.cancel(mine.id),
        lambda: other.files.content(mine.output_file_id),
        lambda: other.batches.create(input_file_id=mine.input_file_id, endpoint=CHAT, completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.batches.list().data == []
    with pytest.raises(openai.NotFoundError):
        other.batches.list(after=mine.id)


@POSTGRES_ONLY
def test_create_is_refused_over_the_storage_quota(
    gw: LiveGateway, worker: WorkerProcess, recorder: SpecRecorder
) -> None:
    org_id, _, key = gw.new_org_key("full")
    client = gw.client(key, recorder)
    file_id = upload_batch_file(client, [chat_line("a", "hi")])
    with gw.admin() as admin:  # exactly full: the batch's output could not be stored
        used = admin.get(f"/admin/organizations/{org_id}/limits").raise_for_status().json()["storage_used_bytes"]
        admin.put(f"/admin/organizations/{org_id}/limits", json={"storage_bytes": used}).raise_for_status()
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert refused.value.body["code"] == "storage_quota_exceeded" and refused.value.body["param"] == "storage_bytes"
    assert client.batches.list().data == []


def test_cancel_ends_with_the_partial_output(gw: LiveGateway, worker: WorkerProcess, client: openai.OpenAI) -> None:
    rows = [chat_line(f"r{i}", f"Tell a long story {i}.", **(LONG | {"max_tokens": 48})) for i in range(400)]
    batch = client.batches.create(input_file_id=upload_batch_file(client, rows), endpoint=CHAT, completion_window="24h")
    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed > 0, 120, "some answers")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = finished(client, batch.id, 60)
    assert done.status == "cancelled" and done.cancelled_at and done.completed_at is None
    output = read_lines(client, done.output_file_id)
    ids = [o["custom_id"] for o in output]
    assert 0 < len(ids) == done.request_counts.completed < 400 and len(set(ids)) == len(ids)
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: no change, no error


@POSTGRES_ONLY
def test_the_completion_window_expires_a_batch_with_its_partial_output(
    gw: LiveGateway, worker: WorkerProcess, client: openai.OpenAI
) -> None:
    rows = [chat_line(f"r{i}", f"Tell a long story {i}.", **LONG) for i in range(300)]
    batch = client.batches.create(
        input_file_id=upload_batch_file(client, rows), endpoint=CHAT, completion_window="3s"
    )  # a window allowed by this gateway's settings
    done = finished(client, batch.id, 60)
    assert done.status == "expired" and done.expired_at and done.expired_at >= batch.expires_at
    answered = [o["custom_id"] for o in read_lines(client, done.output_file_id)]
    expired = [e["custom_id"] for e in read_lines(client, done.error_file_id) if e["error"]["code"] == "batch_expired"]
    assert len(expired) > 0 and sorted(answered + expired) == sorted(r["custom_id"] for r in rows)
    assert done.request_counts.completed == len(answered) and done.request_counts.failed == len(expired)


@POSTGRES_ONLY
@pytest.mark.slow
def test_2000_requests_survive_kill_9_of_the_worker_each_answered_once(
    gw: LiveGateway, worker: WorkerProcess, client: openai.OpenAI
) -> None:
    n = 2000
    rows = [chat_line(f"req-{i:04d}", f"Question {i}: what comes after {i}?") for i in range(n)]
    batch = client.batches.create(input_file_id=upload_batch_file(client, rows), endpoint=CHAT, completion_window="24h")
    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 300, 180, "300 answers")
    worker.kill9()  # mid-batch: committed chunks stay, the lines in flight are lost with it
    at_kill = client.batches.retrieve(batch.id)
    assert at_kill.status == "in_progress" and at_kill.request_counts.completed < n
    worker.start()  # takes the batch over once the dead worker's lease (4 s) lapses
    done = finished(client, batch.id, 300)
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (n, n, 0)
    output = read_lines(client, done.output_file_id)
    ids = [o["custom_id"] for o in output]
    assert len(ids) == n and sorted(ids) == [r["custom_id"] for r in rows], "a custom_id lost or answered twice"
    assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["choices"] for o in output)
    assert done.error_file_id is None


def test_a_responses_batch_stores_its_responses(
    gw: LiveGateway, worker: WorkerProcess, client: openai.OpenAI, spec: SpecValidator
) -> None:
    rows = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": TINY,
                "input": f"Hello {i}",
                "instructions": "Be brief.",
                "max_output_tokens": 6,
                "store": i != 2,
            },
        }
        for i in range(3)
    ]
    rows.append(
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": TINY, "input": "x", "background": True},
        }
    )
    done = finished(
        client,
        client.batches.create(
            input_file_id=upload_batch_file(client, rows), endpoint="/v1/responses", completion_window="24h"
        ).id,
    )
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    output = {o["custom_id"]: o["response"]["body"] for o in read_lines(client, done.output_file_id)}
    for body in output.values():
        assert body["object"] == "response" and body["output"][-1]["type"] == "message"
        assert not spec.errors("Response", body), spec.errors("Response", body)
    assert client.responses.retrieve(output["r0"]["id"]).id == output["r0"]["id"]  # stored, for this organization
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(output["r2"]["id"])  # store: false
    [bad] = read_lines(client, done.error_file_id)
    assert bad["response"]["status_code"] == 400 and bad["response"]["body"]["error"]["param"] == "background"


# --- the store alone (no gateway): SQLite and Postgres -------------------------------------------------------------
def test_the_store_fences_commits_and_keeps_each_line_once(database_url: str) -> None:
    from sqlalchemy.exc import IntegrityError

    from storage import migrate
    from storage.accounts import Accounts
    from storage.batches import BatchStore, Chunk
    from storage.db import Database
    from storage.leases import LeaseLost
    from storage.tables import Batch, BatchLine

    db = Database(database_url)
    try:
        migrate.upgrade(db)
        org, other = Accounts(db).create_org("a").id, Accounts(db).create_org("b").id
        store = BatchStore(db)
        store.add(
            Batch(
                id="batch_1",
                organization_id=org,
                api_key_id="k",
                endpoint=CHAT,
                input_file_id="file-1",
                completion_window="24h",
                created_at=1,
                expires_at=2,
            )
        )
        first = store.claim("w1/a", lease_s=0.5)
        assert first is not None and first.id == "batch_1" and store.claim("w2/b", 30) is None  # held
        assert (
            store.commit(
                first, "w1/a", Chunk([BatchLine(batch_id="batch_1", line=1, ok=True, result="{}")], completed=1)
            )
            == "validating"
        )
        time.sleep(0.6)  # the first claim's lease lapses: another worker takes the batch over
        second = store.claim("w2/b", 30)
        assert second is not None and store.heartbeat("batch_1", "w1/a", 30) is None
        with pytest.raises(LeaseLost):  # the first worker's late chunk is refused
            store.commit(first, "w1/a", Chunk([BatchLine(batch_id="batch_1", line=2, ok=True, result="{}")]))
        with pytest.raises(IntegrityError):  # and a line is stored once, whoever commits it
            store.commit(second, "w2/b", Chunk([BatchLine(batch_id="batch_1", line=1, ok=True, result="{}")]))
        assert store.done_lines("batch_1") == {1} and store.get(org, "batch_1").completed == 1
        assert (
            store.cancel(org, "batch_1").status == "cancelling"
            and store.heartbeat("batch_1", "w2/b", 30) == "cancelling"
        )
        with pytest.raises(NotFound):
            store.get(other, "batch_1")
        with pytest.raises(NotFound):
            store.cancel(other, "batch_1")
        assert store.list(other, limit=10, after=None).items == []
    finally:
        db.dispose()


# --- the worker alone (no gateway, no engine: the engine's answer is faked at BatchRun.send) -----------------------
ENGINE = "http://engine.test:8000"


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


class _Worker:
    """A BatchWorker over a fresh database and blob store; base model ``m`` with one ready engine (published as a
    gateway would), whose answers ``BatchRun.send`` fakes (``sent`` records what reached it)."""

    def __init__(
        self, url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, engine: bool = True, **batches: Any
    ) -> None:
        from finetune.batches.runner import BatchRun, BatchWorker
        from storage import migrate
        from storage.accounts import Accounts
        from storage.batches import BatchStore
        from storage.blobs import LocalBlobStore
        from storage.db import Database
        from storage.engines import EngineRegistry
        from storage.settings import Settings

        self.settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            base_models={"m": {"source": str(tmp_path)}},
            batches={"chunk_lines": 2, "concurrency": 1} | batches,
            requests={"max_body_bytes": 4096},
            worker={"lease_seconds": 3},
        )
        self.db = Database(url)
        migrate.upgrade(self.db)
        self.blobs = LocalBlobStore(tmp_path / "blobs")
        self.accounts, self.store = Accounts(self.db), BatchStore(self.db)
        self.worker = BatchWorker(self.settings, self.db, self.blobs)
        if engine:
            EngineRegistry(self.db).publish([(ENGINE, "m", "ready", None)])
        self.sent: list[dict[str, Any]] = []
        self.on_send: Any = None

        async def send(run: Any, address: Any, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            assert address.url == ENGINE and path == "/v1/chat/completions"
            self.sent.append(body)
            if self.on_send is not None:
                self.on_send(len(self.sent))
            return 200, _answer(body)

        monkeypatch.setattr(BatchRun, "send", send)

    def org(self, name: str) -> str:
        return self.accounts.create_org(name).id

    def batch(self, org_id: str, rows: list[Any] | bytes) -> str:
        from storage.files import Files, NewFile
        from storage.ids import new_id, now
        from storage.tables import Batch

        staged = self.blobs.stage()
        staged.write(rows if isinstance(rows, bytes) else jsonl(rows))
        file = Files(self.db, self.blobs).create(NewFile(org_id, "in.jsonl", "batch", staged))
        created = now()
        return self.store.add(
            Batch(
                id=new_id("batch_"),
                organization_id=org_id,
                api_key_id="k",
                endpoint=CHAT,
                input_file_id=file.id,
                completion_window="24h",
                created_at=created,
                expires_at=created + 86400,
            )
        ).id

    def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        from sqlmodel import select

        from storage.tables import StoredFile

        if file_id is None:
            return []
        with self.db.session() as s:
            key = s.exec(select(StoredFile.blob_key).where(StoredFile.id == file_id)).one()
        with self.blobs.open(key) as fh:
            return [json.loads(line) for line in fh.read().splitlines()]

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def unit(database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Worker]:
    w = _Worker(database_url, tmp_path, monkeypatch)
    yield w
    w.close()


def m_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | body,
    }


def test_poison_lines_are_error_lines_never_a_failed_batch(unit: _Worker) -> None:
    """Too long (past max_body_bytes: skipped without being read whole), nested past max_json_depth or deep enough
    for a RecursionError, a model longer than Batch.model's column first (Postgres enforces it): each is one error
    line; the lines around them are answered."""
    org = unit.org("poison")
    cap = unit.settings.requests.max_body_bytes
    huge = json.dumps(m_line("huge", messages=[{"role": "user", "content": "x" * (3 * cap)}]))
    at_cap = json.dumps(m_line("at-cap", messages=[{"role": "user", "content": ""}]))
    at_cap = at_cap.replace('"content": ""', '"content": "' + "y" * (cap - len(at_cap)) + '"')
    assert len(at_cap) == cap
    rows: list[Any] = [
        m_line("long-model", model="x" * 600),  # first: before the fix the batch failed on Postgres
        m_line("a"),
        huge,
        '{"custom_id": "deep", "method": "POST", "url": "' + CHAT + '", "body": ' + "[" * 1500 + "]" * 1500 + "}",
        '{"custom_id": "nested", "method": "POST", "url": "' + CHAT + '", "body": ' + "[" * 70 + "]" * 70 + "}",
        at_cap,  # exactly the cap: a request
        m_line("b"),
    ]
    batch_id = unit.batch(org, rows)
    assert unit.worker.run_once()
    done = unit.store.get(org, batch_id)
    assert done.status == "completed", done.errors
    assert (done.total, done.completed, done.failed) == (7, 3, 4) and done.model == "m"
    assert [o["custom_id"] for o in unit.lines(done.output_file_id)] == ["a", "at-cap", "b"]
    errors = unit.lines(done.error_file_id)
    assert [(e["custom_id"], e["error"] and e["error"]["code"]) for e in errors] == [
        ("long-model", None),
        (None, "line_too_large"),
        (None, "invalid_json"),
        (None, "invalid_json"),
    ]
    assert errors[0]["response"]["status_code"] == 404  # a model the organization cannot use, in its line
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
    assert f"Line 3 is larger than {cap} bytes" in errors[1]["error"]["message"]
    assert "more than 65 levels deep" in errors[2]["error"]["message"]


def test_a_failed_batch_tells_the_tenant_no_internals(unit: _Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune.batches.runner import BatchRun

    def broken(self: Any) -> None:
        raise RuntimeError("(psycopg.errors.X) value too long [SQL: UPDATE batches SET secret]")

    monkeypatch.setattr(BatchRun, "validate", broken)
    org = unit.org("broken")
    batch_id = unit.batch(org, [m_line("a")])
    assert unit.worker.run_once()
    done = unit.store.get(org, batch_id)
    assert done.status == "failed" and done.errors[0]["code"] == "batch_failed"
    assert "SQL" not in done.errors[0]["message"] and "psycopg" not in done.errors[0]["message"]


def test_a_huge_batch_gives_its_worker_up_to_another_organization(unit: _Worker) -> None:
    """batches.slice_seconds 0: after a chunk, a claim gives the worker back when another organization waits; the
    next claim takes that organization's batch (though the first is older), and so on in turn; each resumes where it
    stopped, every line sent once."""
    unit.worker.settings.batches.slice_seconds = 0

    def rows(name: str, n: int) -> list[Any]:
        return [m_line(f"{name}-{i}", messages=[{"role": "user", "content": f"{name}-{i}"}]) for i in range(n)]

    big_org, small_org = unit.org("big"), unit.org("small")
    big, small = unit.batch(big_org, rows("big", 10)), unit.batch(small_org, rows("small", 3))
    assert unit.worker.run_once()  # the older batch first (fair order), one chunk
    first = unit.store.get(big_org, big)
    assert first.status == "in_progress" and first.completed == 2 and first.lease_owner is None
    assert unit.store.get(small_org, small).status == "validating"
    for _ in range(4):
        assert unit.worker.run_once()
    assert unit.store.get(small_org, small).status == "completed"
    done = unit.store.get(big_org, big)
    assert done.status == "completed" and (done.completed, done.failed) == (10, 0)
    assert [o["custom_id"] for o in unit.lines(done.output_file_id)] == [f"big-{i}" for i in range(10)]
    assert [b["messages"][0]["content"] for b in unit.sent] == [  # in turn, a chunk each, while both wait
        "big-0",
        "big-1",
        "small-0",
        "small-1",
        "big-2",
        "big-3",
        "small-2",
        *(f"big-{i}" for i in range(4, 10)),
    ]


def test_running_batches_are_capped_per_organization(unit: _Worker) -> None:
    from storage.batches import BatchStore

    org, other = unit.org("capped"), unit.org("other")
    store = BatchStore(unit.db, running_cap=1)
    unit.batch(org, [m_line("a")]), unit.batch(org, [m_line("b")]), unit.batch(other, [m_line("c")])
    first = store.claim("w1/a", 30)
    second = store.claim("w2/b", 30)
    assert first is not None and second is not None and {first.organization_id, second.organization_id} == {org, other}
    assert store.claim("w3/c", 30) is None  # org's second batch waits for its first
    assert store.others_waiting(other) and not store.others_waiting(org)


def test_revoking_a_permission_ends_access_inside_a_running_batch(
    unit: _Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model another organization shares: the lines after the revoke are 404 model_not_found in their lines."""
    import httpx

    import finetune.evals.runner as evals_runner
    from storage.ids import now
    from storage.permissions import PermissionStore
    from storage.tables import FineTunedModel

    adapter_calls: list[tuple[str, str]] = []

    def engine(request: httpx.Request) -> httpx.Response:  # the adapter calls, at the engine's HTTP seam
        if request.url.path != "/v1/models":
            adapter_calls.append((request.url.path, json.loads(request.content)["lora_name"]))
        return httpx.Response(200, json={"data": []} if request.url.path == "/v1/models" else None)

    monkeypatch.setattr(evals_runner.EngineTargets, "transport", httpx.MockTransport(engine))
    monkeypatch.setattr(evals_runner.EngineTargets, "recheck_s", 0.0)
    owner, grantee = unit.org("owner"), unit.org("grantee")
    model = f"ft:m:{owner}::abcd1234"
    with unit.db.session() as s:
        s.add(FineTunedModel(id=model, organization_id=owner, base_model="m", adapter_key="models/x", created_at=now()))
    permissions = PermissionStore(unit.db)
    [grant] = permissions.create(owner, model, [grantee])
    unit.on_send = lambda n: n == 2 and permissions.delete(owner, model, grant.id)
    done_id = unit.batch(grantee, [m_line(f"r{i}", model=model) for i in range(5)])
    assert unit.worker.run_once()
    done = unit.store.get(grantee, done_id)
    assert done.status == "completed" and (done.completed, done.failed) == (2, 3)
    assert [o["custom_id"] for o in unit.lines(done.output_file_id)] == ["r0", "r1"]
    for e in unit.lines(done.error_file_id):
        assert e["response"]["status_code"] == 404 and e["response"]["body"]["error"]["code"] == "model_not_found"
    assert all(body["model"] == "models/x" for body in unit.sent)  # the engine-side name, never sent after
    # loaded for the batch, unloaded when it ends (no one else had it loaded)
    assert adapter_calls == [("/v1/load_lora_adapter", "models/x"), ("/v1/unload_lora_adapter", "models/x")]


def test_a_batch_cancelled_while_waiting_for_an_engine_gets_no_500_lines(
    database_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    w = _Worker(database_url, tmp_path, monkeypatch, engine=False)  # no engine: the lines wait for one
    try:
        org = w.org("waiting")
        batch_id = w.batch(org, [m_line(f"r{i}") for i in range(3)])
        runner = threading.Thread(target=w.worker.run_once)
        runner.start()
        wait_until(lambda: w.store.get(org, batch_id).status == "in_progress", 30, "the batch to start")
        w.store.cancel(org, batch_id)
        runner.join(30)
        assert not runner.is_alive()
        done = w.store.get(org, batch_id)
        assert done.status == "cancelled" and (done.completed, done.failed) == (0, 0), w.lines(done.error_file_id)
        assert done.error_file_id is None and not w.sent
    finally:
        w.close()


def test_an_eval_file_line_is_held_to_the_same_caps_and_a_failed_run_shows_no_internals(
    database_url: str, tmp_path: Any
) -> None:
    """The eval runner's jsonl reader: a line over max_body_bytes (not read whole) or nested too deep fails the run
    with invalid_file naming the line, never a RecursionError or an unbounded read."""
    from finetune.evals.runner import EvalWorker, RunFailed
    from storage import migrate
    from storage.accounts import Accounts
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.files import Files, NewFile
    from storage.settings import Settings
    from storage.tables import EvalRun

    settings = Settings(data_dir=tmp_path, database_url=database_url, requests={"max_body_bytes": 4096})
    db = Database(database_url)
    try:
        migrate.upgrade(db)
        blobs = LocalBlobStore(tmp_path / "blobs")
        org = Accounts(db).create_org("evals").id
        worker = EvalWorker(settings, db, blobs)
        good = json.dumps({"item": {"q": "1"}})
        for bad, why in [
            ("x" * 10_000, "line 2: larger than 4096 bytes"),
            ('{"item": ' + "[" * 2000 + "]" * 2000 + "}", "line 2: not acceptable JSON (it nests"),
        ]:
            staged = blobs.stage()
            staged.write(jsonl([good, bad, good]))
            file = Files(db, blobs).create(NewFile(org, "e.jsonl", "evals", staged))
            run = EvalRun(
                id="evalrun_1",
                eval_id="eval_1",
                organization_id=org,
                model="m",
                created_at=1,
                data_source={"type": "jsonl", "source": {"type": "file_id", "id": file.id}},
            )
            items = worker._items(run)
            assert next(items)[1] == {"q": "1"}
            with pytest.raises(RunFailed) as failed:
                next(items)
            assert failed.value.code == "invalid_file" and why in failed.value.message, failed.value.message

        # and a run that fails for an internal reason tells the tenant no internals (as a batch)
        def broken(*_: Any) -> None:
            raise RuntimeError("[SQL: SELECT secret]")

        worker.execute = broken  # type: ignore[method-assign]
        with db.session() as s:
            s.add(EvalRun(id="evalrun_2", eval_id="eval_1", organization_id=org, model="m", created_at=1))
        claimed = worker.store.claim("w/1", 30)
        assert claimed is not None and claimed.id == "evalrun_2"
        worker.work(claimed, "w/1")
        error = worker.store.get_run(org, None, "evalrun_2").error
        assert error["code"] == "eval_failed" and "SQL" not in error["message"], error
    finally:
        db.dispose()
