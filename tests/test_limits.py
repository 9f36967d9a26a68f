"""Limits: fair claiming across organizations and per-organization caps (storage, SQLite and Postgres); rate limits
with OpenAI's headers through the real client, in-process and shared through a real Redis by two gateways and
across a restart; the storage quota."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.ratelimit.counters import Bucket, Counters, MemoryCounters, RedisCounters, Slot, duration
from gateway.ratelimit.reserve import ReservedCounters
from storage import migrate
from storage.accounts import Accounts
from storage.db import Database
from storage.evals import EvalStore
from storage.exports import ExportStore
from storage.ids import new_id, now
from storage.jobs import JobStore
from storage.tables import Export, FineTuningJob
from tests.finetune_support import TINY, wait_until
from tests.serving_support import shared_serving_env, wait_engines_ready
from tests.support import LiveGateway, SpecRecorder

HELLO = [{"role": "user", "content": "What is the capital of France?"}]
REDIS_URL = os.environ.get("TUNEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# --- fair share and caps, at the storage level -------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def _jobs(jobs: JobStore, org_id: str, n: int) -> list[str]:
    ids = [new_id("ftjob-") for _ in range(n)]
    for job_id in ids:
        jobs.insert(
            FineTuningJob(
                id=job_id,
                organization_id=org_id,
                model="m",
                training_file="file-x",
                seed=1,
                status="queued",
                created_at=now(),
            ),
            "queued",
        )
    return ids


def test_a_small_organization_is_not_starved_by_a_big_queue(db: Database) -> None:
    accounts, jobs = Accounts(db), JobStore(db)
    org_a, org_b = accounts.create_org("a").id, accounts.create_org("b").id
    a_jobs = _jobs(jobs, org_a, 20)
    (b_job,) = _jobs(jobs, org_b, 1)  # queued after all of A's
    first = jobs.claim("w1", 60)
    assert first is not None and first.id == a_jobs[0]  # oldest first while nobody runs anything
    second = jobs.claim("w2", 60)
    assert second is not None and second.id == b_job, "B's one job must start before A's 19 others"
    third = jobs.claim("w3", 60)
    assert third is not None and third.id == a_jobs[1]


def test_per_organization_cap_on_running_jobs_default_and_override(db: Database) -> None:
    accounts = Accounts(db)
    jobs = JobStore(db, running_cap=2)  # the settings default
    org_a, org_b = accounts.create_org("a").id, accounts.create_org("b").id
    accounts.set_limit_overrides(org_b, {"running_jobs": 1})
    _jobs(jobs, org_a, 5)
    _jobs(jobs, org_b, 5)
    claimed = [jobs.claim(f"w{i}", 60) for i in range(6)]
    per_org = [j.organization_id for j in claimed if j is not None]
    assert sorted(per_org) == sorted([org_a, org_a, org_b]), per_org
    assert claimed[3:] == [None, None, None]
    running = next(j for j in claimed if j is not None and j.organization_id == org_b)
    jobs.release(running.id, running.lease_owner)  # its worker lets go: B may run one again
    again = jobs.claim("w9", 60)
    assert again is not None and again.organization_id == org_b


def test_a_lapsed_lease_frees_its_slot_under_the_cap(db: Database) -> None:
    accounts, exports = Accounts(db), ExportStore(db, running_cap=1)
    org = accounts.create_org("a").id
    for _ in range(2):
        exports.add(Export(id=new_id("export-"), organization_id=org, model="m", format="gguf", created_at=now()))
    first = exports.claim("w1", 0.5)
    assert first is not None and exports.claim("w2", 60) is None  # at its cap of 1
    time.sleep(0.6)  # the first worker died: its lease lapses, and the export is taken over (not a second one)
    taken = exports.claim("w2", 60)
    assert taken is not None and taken.id == first.id


def test_eval_runs_share_the_same_fair_claim(db: Database) -> None:
    from storage.tables import Eval, EvalRun

    accounts, evals = Accounts(db), EvalStore(db)
    org_a, org_b = accounts.create_org("a").id, accounts.create_org("b").id
    for org in (org_a, org_a, org_a, org_b):
        eval_id = new_id("eval_")
        evals.add(Eval(id=eval_id, organization_id=org, created_at=now()))
        evals.add(EvalRun(id=new_id("evalrun_"), eval_id=eval_id, organization_id=org, model="m", created_at=now()))
    order = [evals.claim(f"w{i}", 60).organization_id for i in range(3)]  # type: ignore[union-attr]
    assert order == [org_a, org_b, org_a]


# --- the counters: the same answers in the process and in Redis ----------------------------------------------------


Scenario = Callable[[Counters, str], Awaitable[None]]


@pytest.fixture(params=["memory", "redis", "reserved"])
def with_counters(request: pytest.FixtureRequest, redis_prefix: str) -> Callable[[Scenario], None]:
    def run(scenario: Scenario) -> None:
        async def main() -> None:  # redis.asyncio binds its connections to the loop that made them
            made: Counters = {
                "memory": MemoryCounters,
                "redis": lambda: RedisCounters(REDIS_URL),
                "reserved": lambda: ReservedCounters(RedisCounters(REDIS_URL)),
            }[request.param]()
            try:
                await scenario(made, redis_prefix)
            finally:
                await made.close()

        asyncio.run(main())

    return run


def test_buckets_are_all_or_nothing_and_refill(with_counters: Callable[[Scenario], None]) -> None:
    async def scenario(made: Counters, prefix: str) -> None:
        roomy, tight = Bucket(f"{prefix}:roomy", 600, 1), Bucket(f"{prefix}:tight", 2, 1)
        for left in (1, 0):
            verdict = await made.admit([roomy, tight], [], "m")
            assert verdict.refused is None and math.floor(verdict.levels[1]) == left
        refused = await made.admit([roomy, tight], [], "m")
        assert refused.refused == 1 and 25 < refused.retry_after <= 30  # 1 request at 2/minute: ≤ 30 s
        assert 597 < refused.levels[0] < 599, "a refusal takes nothing from the other buckets"
        await made.settle([Bucket(tight.key, 2, -1)], [], "m")  # give one back
        assert (await made.admit([tight], [], "m")).refused is None
        assert (await made.admit([tight], [], "m")).refused == 0
        assert (await made.admit([Bucket(tight.key, 4, 1)], [], "m")).refused is None  # a raised limit: at once

    with_counters(scenario)


def test_slots_are_held_until_settled(with_counters: Callable[[Scenario], None]) -> None:
    async def scenario(made: Counters, prefix: str) -> None:
        slot = Slot(f"{prefix}:streams", 1)
        assert (await made.admit([], [slot], "a")).refused is None
        assert (await made.admit([], [slot], "b")).refused == 0
        await made.settle([], [slot], "a")
        assert (await made.admit([], [slot], "b")).refused is None

    with_counters(scenario)


def test_reset_durations_read_like_openai() -> None:
    assert [duration(s) for s in (0, 0.0171, 1, 59.95, 360, 61.5)] == ["0s", "18ms", "1s", "59.95s", "6m0s", "1m1.5s"]


# --- rate limits through the real client (no engine: any /v1 route counts one request) ---------------------------

RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def _set_limits(gw: LiveGateway, org_id: str, **limits: int | None) -> dict:
    with gw.admin() as admin:
        return admin.put(f"/admin/organizations/{org_id}/limits", json=limits).raise_for_status().json()


def test_429_with_openai_headers_and_retry_after(gateway: LiveGateway, recorder: SpecRecorder) -> None:
    org_id, _, secret = gateway.new_org_key("rpm")
    limits = _set_limits(gateway, org_id, requests_per_minute=3, tokens_per_minute=1000)
    assert limits["overrides"] == {"requests_per_minute": 3, "tokens_per_minute": 1000}
    assert limits["effective"]["requests_per_minute"] == 3 and limits["effective"]["concurrent_streams"] == 64
    client = gateway.client(secret, recorder)
    remaining = []
    for _ in range(3):
        raw = client.models.with_raw_response.list()
        assert all(h in raw.headers for h in RATE_HEADERS), dict(raw.headers)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as refused:
        client.models.list()
    response = refused.value.response
    assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 21
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+(\.\d+)?s", response.headers["x-ratelimit-reset-requests"])
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert f"organization {org_id}" in error["message"] and "requests per min" in error["message"]
    # an error answer to an authenticated key carries the headers too
    missing = httpx.get(f"{gateway.url}/v1/files/file-nope", headers={"authorization": f"Bearer {secret}"})
    assert missing.status_code == 429 and "x-ratelimit-limit-requests" in missing.headers
    # raising the limit applies at once (the bucket gains the difference)
    _set_limits(gateway, org_id, requests_per_minute=100)
    assert client.models.with_raw_response.list().headers["x-ratelimit-limit-requests"] == "100"


def test_per_key_limits_leave_the_other_keys_alone(gateway: LiveGateway) -> None:
    org_id, key_id, secret = gateway.new_org_key("keys")
    with gateway.admin() as admin:
        other = admin.post(f"/admin/organizations/{org_id}/keys", json={"name": "b"}).raise_for_status().json()
    _set_limits(gateway, org_id, key_requests_per_minute=2)
    first, second = gateway.client(secret), gateway.client(other["secret"])
    first.models.list()
    first.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        first.files.list()
    assert f"API key {key_id}" in refused.value.response.json()["error"]["message"]
    assert second.models.with_raw_response.list().headers["x-ratelimit-remaining-requests"] == "1"


def test_token_estimate_is_refused_or_given_back(gateway: LiveGateway) -> None:
    """No engine here: a completion too large for the budget is refused before any engine; one that fails (unknown
    model) gives its whole estimate back."""
    org_id, _, secret = gateway.new_org_key("tpm")
    _set_limits(gateway, org_id, tokens_per_minute=600)
    client = gateway.client(secret)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=700)
    assert "Request too large" in refused.value.message and "Requested 7" in refused.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=500
        )
    assert int(missing.value.response.headers["x-ratelimit-remaining-tokens"]) < 100  # the estimate was taken
    after = wait_until(
        lambda: int(client.models.with_raw_response.list().headers["x-ratelimit-remaining-tokens"]) >= 590 or None,
        10,
        "the estimate to come back",
    )
    assert after <= 600


def test_cli_sets_shows_and_resets_overrides(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEGATE_")}
    env.update(TUNEGATE_DATA_DIR=str(tmp_path), TUNEGATE_LIMITS__RUNNING_JOBS="3")

    def cli(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    org_id = cli("orgs", "create", "cli")["id"]
    shown = cli("orgs", "limits", "set", org_id, "--requests-per-minute", "60", "--storage-bytes", "1000")
    assert shown["overrides"] == {"requests_per_minute": 60, "storage_bytes": 1000}
    assert shown["effective"]["running_jobs"] == 3 and shown["storage_used_bytes"] == 0
    assert cli("orgs", "limits", "set", org_id, "--running-jobs", "1")["overrides"]["requests_per_minute"] == 60
    assert cli("orgs", "limits", "reset", org_id, "storage_bytes")["overrides"] == {
        "requests_per_minute": 60,
        "running_jobs": 1,
    }
    assert cli("orgs", "limits", "reset", org_id)["overrides"] == {}
    assert cli("orgs", "limits", "show", org_id)["effective"]["running_jobs"] == 3


# --- Redis: one budget for several gateways, kept across a restart; fail open when it is down ---------------------


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"tgtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_two_gateways_share_one_redis_budget_across_a_restart(tmp_path: Path, redis_prefix: str) -> None:
    env = {"TUNEGATE_REDIS_URL": REDIS_URL, "TUNEGATE_LIMITS__REDIS_PREFIX": redis_prefix}
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = LiveGateway(tmp_path / "a", url, **env)
    second = LiveGateway(tmp_path / "b", url, TUNEGATE_WORKER__EMBEDDED="false", **env)
    first.start()
    second.start()
    try:
        org_id, _, secret = first.new_org_key("shared")
        _set_limits(first, org_id, requests_per_minute=4)
        one, two = first.client(secret), second.client(secret)
        seen = [
            int(c.models.with_raw_response.list().headers["x-ratelimit-remaining-requests"])
            for c in (one, two, one, two)
        ]
        assert seen == [3, 2, 1, 0], "both gateways count against one budget"
        for client in (one, two):
            with pytest.raises(openai.RateLimitError):
                client.models.list()
        second.restart()
        with pytest.raises(openai.RateLimitError):
            second.client(secret).models.list()  # the budget outlived the process
    finally:
        first.stop()
        second.stop()


def test_redis_down_fails_open_with_a_warning(tmp_path: Path) -> None:
    gw = LiveGateway(
        tmp_path,
        f"sqlite:///{tmp_path / 't.db'}",
        TUNEGATE_REDIS_URL="redis://127.0.0.1:1/0",
        TUNEGATE_LIMITS__REQUESTS_PER_MINUTE="1",
    )
    gw.start()
    try:
        _, _, secret = gw.new_org_key("open")
        for _ in range(3):  # over the limit of 1, but nobody can count: they pass, without headers
            raw = gw.client(secret).models.with_raw_response.list()
            assert "x-ratelimit-limit-requests" not in raw.headers
    finally:
        gw.stop()
    assert "rate-limit counters unavailable" in gw.log.read_text()


# --- the storage quota --------------------------------------------------------------------------------------------


def test_storage_quota_refuses_uploads_jobs_and_exports(gateway: LiveGateway) -> None:
    org_id, _, secret = gateway.new_org_key("quota")
    _set_limits(gateway, org_id, storage_bytes=100)
    client = gateway.client(secret)
    client.files.create(file=("a.jsonl", io.BytesIO(b"x" * 60)), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.files.create(file=("b.jsonl", io.BytesIO(b"y" * 60)), purpose="batch")
    error = refused.value.response.json()["error"]
    assert error["code"] == "storage_quota_exceeded" and error["param"] == "storage_bytes"
    assert "quota 100 bytes, 60 used, 60 more" in error["message"]
    assert [f.filename for f in client.files.list().data] == ["a.jsonl"]  # nothing of the refused upload stays
    with gateway.admin() as admin:
        assert admin.get(f"/admin/organizations/{org_id}/limits").json()["storage_used_bytes"] == 60
    _set_limits(gateway, org_id, storage_bytes=60)  # exactly full: nothing more may be written
    with pytest.raises(openai.PermissionDeniedError, match="storage_quota_exceeded|Storage quota"):
        client.fine_tuning.jobs.create(model="any", training_file="file-any")
    export = httpx.post(
        f"{gateway.url}/v1/exports",
        json={"model": "any", "format": "gguf"},
        headers={"authorization": f"Bearer {secret}"},
    )
    assert export.status_code == 403 and export.json()["error"]["code"] == "storage_quota_exceeded"


# --- tokens and streams, through a real engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("limits-serving")
    gw = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **shared_serving_env(tiny_model))
    gw.start()
    wait_engines_ready(gw)
    yield gw
    gw.stop()


def test_tokens_are_settled_with_the_real_usage(engine_gw: LiveGateway) -> None:
    """JSON whitespace inflates the admission estimate (bytes / 4) but not the prompt: once the answer is over, the
    bucket holds capacity − real usage, not capacity − estimate."""
    org_id, _, secret = engine_gw.new_org_key("settle")
    capacity = 6000
    _set_limits(engine_gw, org_id, tokens_per_minute=capacity)
    body = json.dumps({"model": TINY, "messages": HELLO, "max_tokens": 5, "ignore_eos": True}) + " " * 8000
    auth = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    started = time.monotonic()
    chat = httpx.post(f"{engine_gw.url}/v1/chat/completions", content=body, headers=auth, timeout=120)
    assert chat.status_code == 200, chat.text
    used = chat.json()["usage"]["total_tokens"]
    assert int(chat.headers["x-ratelimit-remaining-tokens"]) <= capacity - 2000  # the estimate: ≥ 8000 / 4
    after = int(engine_gw.client(secret).models.with_raw_response.list().headers["x-ratelimit-remaining-tokens"])
    refilled = (time.monotonic() - started) * capacity / 60
    assert capacity - used - 1 <= after <= capacity - used + refilled + 1, (after, used, refilled)


def test_concurrent_streams_are_capped_and_freed(engine_gw: LiveGateway) -> None:
    org_id, _, secret = engine_gw.new_org_key("streams")
    _set_limits(engine_gw, org_id, key_concurrent_streams=1)
    client = engine_gw.client(secret)
    long = dict(model=TINY, messages=HELLO, max_tokens=1500, extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(stream=True, **long)
    next(iter(stream))  # it is open
    with pytest.raises(openai.RateLimitError, match="concurrent streams"):
        client.chat.completions.create(stream=True, **long)
    client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2)  # non-streaming: not a stream slot
    stream.close()  # the client leaves: the slot is freed once the gateway has noticed
    again = wait_until(lambda: _try_stream(client), 30, "the stream slot to be freed")
    assert again


def test_a_stream_frees_its_slot_before_the_client_sees_it_end(engine_gw: LiveGateway) -> None:
    """At one stream at a time, a stream opened the moment the last one's body ends is never refused: the slot is
    settled before the response's last message, not after it (a client reading to the end, as httpx does)."""
    org_id, _, secret = engine_gw.new_org_key("back-to-back")
    _set_limits(engine_gw, org_id, key_concurrent_streams=1)
    body = {"model": TINY, "messages": HELLO, "max_tokens": 2, "stream": True}
    refused = 0
    with httpx.Client(base_url=engine_gw.url, headers={"authorization": f"Bearer {secret}"}, timeout=30) as http:
        for _ in range(60):
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                refused += response.status_code == 429
                response.read()
    assert refused == 0, f"{refused} of 60 back-to-back streams were refused"


def test_a_stream_frees_its_slot_before_the_sdk_sees_done(engine_gw: LiveGateway) -> None:
    """The same with the openai SDK, which stops reading at ``data: [DONE]`` and hangs up (the order of settling
    and that event, which this race seldom shows, is held by the test below)."""
    org_id, _, secret = engine_gw.new_org_key("back-to-back-sdk")
    _set_limits(engine_gw, org_id, key_concurrent_streams=1)
    client = openai.OpenAI(base_url=f"{engine_gw.url}/v1", api_key=secret, max_retries=0)
    refused = sum(not _try_stream(client) for _ in range(60))
    assert refused == 0, f"{refused} of 60 back-to-back streams were refused"


def test_a_stream_is_settled_before_its_done_event_is_sent() -> None:
    """At the middleware's seam (the limiter recorded, the ASGI messages real): a stream's slot is settled before
    the message carrying ``data: [DONE]``, where the openai SDK stops reading, not only before the last one."""
    from types import SimpleNamespace

    from gateway.middleware import rate_limited

    log: list[str] = []
    admission = SimpleNamespace(headers=[("x-ratelimit-limit-requests", "60")])

    class Limiter:
        async def settle_now(self, seen: object) -> None:
            log.append("settled" if seen is admission else "settled-none")

        def finish(self, seen: object) -> None:
            log.append("finished")

    async def app(scope: dict, receive: object, send: Callable) -> None:
        scope["state"]["rate_limit"] = admission
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'data: {"x": 1}\n\n', "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send(message: dict) -> None:
        log.append(message.get("body", b"start").decode() or "end")

    scope = {
        "type": "http",
        "state": {},
        "app": SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(limiter=Limiter()))),
    }
    asyncio.run(rate_limited(app)(scope, None, send))
    assert log[: log.index("data: [DONE]\n\n") + 1] == ["start", 'data: {"x": 1}\n\n', "settled", "data: [DONE]\n\n"]
    assert log[-1] == "finished"


def _try_stream(client: openai.OpenAI) -> bool:
    try:
        chunks = list(client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=2, stream=True))
    except openai.RateLimitError:
        return False
    return bool(chunks)
