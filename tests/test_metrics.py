"""Prometheus /metrics (gateway/metrics.py): scraped from live gateways — one with a real vLLM engine of the tiny
model on Postgres, and ``tunegate serve --workers 2`` over the same engine, whose counts must add up whichever
process answers the scrape. The guard: off (404), open, admin key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _fresh_postgres_database
from tests.finetune_support import TINY, chat_jsonl, qa_pairs, upload, wait_until
from tests.serving_support import engine_address, make_adapter, register_adapter, shared_serving_env, wait_engines_ready
from tests.support import ADMIN_KEY, LiveGateway

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Say hello."}]
N_REQUESTS = 24


def scrape(url: str, key: str | None = ADMIN_KEY) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics: (name, sorted labels) → value."""
    response = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"} if key else {}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def engine_gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """A gateway on the shared vLLM engine, on Postgres; no worker (queued jobs stay queued); one adapter per
    engine, so the second adapter evicts the first."""
    url, drop = _fresh_postgres_database()
    gw = LiveGateway(
        tmp_path_factory.mktemp("metrics"),
        url,
        **shared_serving_env(
            tiny_model, TUNEGATE_WORKER__EMBEDDED="false", TUNEGATE_SERVING__MAX_ADAPTERS_PER_ENGINE="1"
        ),
    )
    gw.start()
    try:
        wait_engines_ready(gw, 600)
        yield gw
    finally:
        gw.stop()
        drop()


@pytest.fixture(scope="module")
def org(engine_gw: LiveGateway) -> tuple[str, str]:
    org_id, _, key = engine_gw.new_org_key("metrics")
    return org_id, key


def test_requests_tokens_and_time_to_first_token(engine_gw: LiveGateway, org: tuple[str, str], recorder) -> None:  # noqa: ANN001
    client = engine_gw.client(org[1], recorder)
    before = scrape(engine_gw.url)
    answer = client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=5, temperature=0)
    usage = answer.usage
    stream = client.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=7, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    streamed = [c.usage for c in stream if c.usage][-1]
    with pytest.raises(Exception, match="does not exist"):
        client.chat.completions.create(model="no-such-model-x", messages=HELLO, max_tokens=2)
    after = scrape(engine_gw.url)
    assert recorder.violations == []

    assert delta(before, after, "tunegate_http_requests_total", route=CHAT, model=TINY, status="200") == 2
    # a model that does not resolve makes up no label value: counted under model=""
    assert delta(before, after, "tunegate_http_requests_total", route=CHAT, model="", status="404") == 1
    assert not any("no-such-model-x" in str(ls) for _, ls in after)
    assert delta(before, after, "tunegate_http_request_duration_seconds_count", route=CHAT, model=TINY) == 2
    assert delta(before, after, "tunegate_time_to_first_token_seconds_count", route=CHAT, model=TINY) == 1
    assert (
        delta(before, after, "tunegate_tokens_total", model=TINY, direction="completion")
        == usage.completion_tokens + streamed.completion_tokens
    )
    assert (
        delta(before, after, "tunegate_tokens_total", model=TINY, direction="prompt")
        == usage.prompt_tokens + streamed.prompt_tokens
    )
    # the histogram's buckets hold every observation: the +Inf bucket equals the count
    assert value(after, "tunegate_http_request_duration_seconds_bucket", route=CHAT, model=TINY, le="+Inf") == value(
        after, "tunegate_http_request_duration_seconds_count", route=CHAT, model=TINY
    )
    # the engine and its state, as this gateway sees it
    assert value(after, "tunegate_engine_replicas", base_model=TINY, state="ready") == 1
    assert value(after, "tunegate_engine_replica_ready", base_model=TINY) == 1


def test_adapter_loads_and_evictions(
    engine_gw: LiveGateway, org: tuple[str, str], tiny_model: str, tmp_path: Path
) -> None:
    org_id, key = org
    start = scrape(engine_gw.url)

    def loads() -> float:
        return delta(start, scrape(engine_gw.url), "tunegate_adapter_loads_total", base_model=TINY, outcome="loaded")

    # one at a time, so that no two loads race (the warm-up loads each new model at once)
    a = register_adapter(engine_gw, org_id, make_adapter(tiny_model, tmp_path / "a", seed=1), "ma")
    wait_until(lambda: loads() >= 1, 60, "the warm-up to load the first adapter")
    b = register_adapter(engine_gw, org_id, make_adapter(tiny_model, tmp_path / "b", seed=2), "mb")
    wait_until(lambda: loads() >= 2, 60, "the warm-up to load the second adapter")
    client = engine_gw.client(key)
    client.chat.completions.create(model=b, messages=HELLO, max_tokens=2)  # loaded: no load
    before = scrape(engine_gw.url)
    assert delta(start, before, "tunegate_adapter_unloads_total", base_model=TINY, reason="evicted") >= 1
    assert value(before, "tunegate_engine_adapters_loaded", base_model=TINY) == 1  # max_adapters_per_engine
    client.chat.completions.create(model=a, messages=HELLO, max_tokens=2)  # a evicts b
    after = scrape(engine_gw.url)
    assert delta(before, after, "tunegate_adapter_loads_total", base_model=TINY, outcome="loaded") == 1
    assert delta(before, after, "tunegate_adapter_unloads_total", base_model=TINY, reason="evicted") == 1
    assert delta(before, after, "tunegate_http_requests_total", route=CHAT, model=a, status="200") == 1
    assert client.models.delete(a).deleted  # deleting the loaded model unloads it
    wait_until(
        lambda: delta(after, scrape(engine_gw.url), "tunegate_adapter_unloads_total", reason="deleted") == 1,
        30,
        "the deleted model's unload",
    )


def test_rate_limit_rejections(engine_gw: LiveGateway) -> None:
    org_id, _, key = engine_gw.new_org_key("limited")
    with engine_gw.admin() as admin:
        admin.put(f"/admin/organizations/{org_id}/limits", json={"requests_per_minute": 1}).raise_for_status()
    before = scrape(engine_gw.url)
    auth = {"authorization": f"Bearer {key}"}
    statuses = [httpx.get(f"{engine_gw.url}/v1/models", headers=auth).status_code for _ in range(3)]
    assert statuses == [200, 429, 429]
    after = scrape(engine_gw.url)
    assert delta(before, after, "tunegate_rate_limit_rejections_total", scope="org", limit="requests") == 2
    assert delta(before, after, "tunegate_http_requests_total", route="/v1/models", status="429") == 2


def test_queue_depth_age_and_job_states(engine_gw: LiveGateway, org: tuple[str, str]) -> None:
    client = engine_gw.client(org[1])
    before = scrape(engine_gw.url)
    file_id = upload(client, chat_jsonl(qa_pairs(4)))
    job = client.fine_tuning.jobs.create(model=TINY, training_file=file_id)  # no worker runs: it waits
    time.sleep(1.2)
    after = scrape(engine_gw.url)
    assert delta(before, after, "tunegate_queue_depth", kind="fine_tuning_job") == 1
    assert value(after, "tunegate_queue_oldest_age_seconds", kind="fine_tuning_job") >= 1.0
    assert value(after, "tunegate_queue_depth", kind="export") == 0
    assert delta(before, after, "tunegate_work_items", kind="fine_tuning_job", status=job.status) == 1
    client.fine_tuning.jobs.cancel(job.id)
    cancelled = scrape(engine_gw.url)
    assert value(cancelled, "tunegate_queue_depth", kind="fine_tuning_job") == value(
        before, "tunegate_queue_depth", kind="fine_tuning_job"
    )
    assert delta(after, cancelled, "tunegate_work_items", kind="fine_tuning_job", status="cancelled") == 1


def test_guard_admin_by_default(engine_gw: LiveGateway, org: tuple[str, str]) -> None:
    assert httpx.get(f"{engine_gw.url}/metrics").status_code == 401
    assert httpx.get(f"{engine_gw.url}/metrics", headers={"authorization": f"Bearer {org[1]}"}).status_code == 401
    assert scrape(engine_gw.url)  # the admin key


@pytest.mark.parametrize("mode", ["off", "open"])
def test_guard_off_and_open(mode: str, tmp_path: Path) -> None:
    gw = LiveGateway(
        tmp_path, f"sqlite:///{tmp_path / 'tunegate.db'}", TUNEGATE_METRICS=mode, TUNEGATE_WORKER__EMBEDDED="false"
    )
    gw.start()
    try:
        response = httpx.get(f"{gw.url}/metrics")
        if mode == "off":
            assert response.status_code == 404
            assert response.json()["error"]["type"] == "invalid_request_error"
        else:
            assert response.status_code == 200
            assert "tunegate_queue_depth" in response.text
    finally:
        gw.stop()


def test_unmatched_routes_are_one_label_and_batches_and_background_responses_are_work(tmp_path: Path) -> None:
    """No engine: a 404 or 405 (which never reach the per-route middleware) is counted under route "unmatched",
    whatever the path; batches waiting for a worker and queued background responses are queues like the others."""
    from storage.db import Database
    from storage.tables import Batch, StoredResponse

    gw = LiveGateway(
        tmp_path, f"sqlite:///{tmp_path / 'tunegate.db'}", TUNEGATE_METRICS="open", TUNEGATE_WORKER__EMBEDDED="false"
    )
    gw.start()
    try:
        org_id = gw.new_org_key("m")[0]
        now = int(time.time())
        with Database(gw.database_url).session() as s:
            s.add(
                Batch(
                    id="batch_1",
                    organization_id=org_id,
                    api_key_id="k",
                    endpoint=CHAT,
                    input_file_id="f",
                    completion_window="24h",
                    created_at=now - 5,
                    expires_at=now + 3600,
                )
            )
            for i, (status, background) in enumerate([("queued", True), ("completed", True), ("completed", False)]):
                s.add(
                    StoredResponse(
                        id=f"resp_{i}",
                        organization_id=org_id,
                        model="m",
                        status=status,
                        background=background,
                        created_at=now - 5,
                        body={},
                    )
                )
        before = scrape(gw.url, None)
        for method, path in [
            ("GET", "/no/such/path"),
            ("GET", "/another/made-up/path"),
            ("DELETE", CHAT),
            ("BREW", "/health"),
        ]:
            assert httpx.request(method, f"{gw.url}{path}").status_code in (404, 405, 400)
        after = scrape(gw.url, None)
        assert delta(before, after, "tunegate_http_requests_total", route="unmatched", status="404") == 2
        assert delta(before, after, "tunegate_http_requests_total", route="unmatched", method="DELETE") == 1
        routes = {dict(ls)["route"] for (n, ls) in after if n == "tunegate_http_requests_total"}
        assert not any("no/such" in r or "made-up" in r for r in routes), routes
        methods = {dict(ls)["method"] for (n, ls) in after if n == "tunegate_http_requests_total"}
        assert "BREW" not in methods
        assert value(after, "tunegate_queue_depth", kind="batch") == 1
        assert value(after, "tunegate_queue_oldest_age_seconds", kind="batch") >= 5
        assert value(after, "tunegate_queue_depth", kind="background_response") == 1
        assert value(after, "tunegate_work_items", kind="background_response", status="completed") == 1, (
            "a response made without background is no work item"
        )
    finally:
        gw.stop()


def test_workers_behind_one_port_add_up(engine_gw: LiveGateway, org: tuple[str, str], tmp_path: Path) -> None:
    """``serve --workers 2`` on the first gateway's engine: every scrape, whichever process answers it, counts
    every request any process served (prometheus_client multiprocess mode)."""
    engine = engine_address(engine_gw)
    gw = LiveGateway(
        tmp_path,
        engine_gw.database_url,
        TUNEGATE_WORKER__EMBEDDED="false",
        TUNEGATE_BASE_MODELS=json.dumps(
            {TINY: {"source": "unused", "engine_urls": [engine.url], "engine_api_key": engine.api_key}}
        ),
    )
    gw.serve_args = ["--workers", "2"]
    gw.start()
    url, port = gw.url, gw.port
    try:
        wait_until(
            lambda: [e["state"] for e in httpx.get(f"{url}/health").json()["engines"]] == ["ready"],
            60,
            "both processes' engine to be ready",
        )
        before = scrape(url)
        auth = {"authorization": f"Bearer {org[1]}"}
        body = {"model": TINY, "messages": HELLO, "max_tokens": 2}
        for _ in range(N_REQUESTS):  # a new connection each: the kernel hands them to either process
            assert httpx.post(f"{url}{CHAT}", json=body, headers=auth, timeout=60).status_code == 200
        counts = [
            delta(before, scrape(url), "tunegate_http_requests_total", route=CHAT, model=TINY, status="200")
            for _ in range(4)
        ]
        assert counts == [N_REQUESTS] * 4
        pids = {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "run" / f"prometheus-{port}").glob("counter_*.db")}
        assert len(pids) == 2, pids  # both processes served (and counted) requests
    finally:
        gw.stop()


def test_dashboard_uses_only_exported_metrics(engine_gw: LiveGateway) -> None:
    """Every series deploy/grafana/tunegate.json queries is one the gateway exports."""
    import re

    dashboard = json.loads((Path(__file__).resolve().parents[1] / "deploy/grafana/tunegate.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {name for e in exprs for name in re.findall(r"\btunegate_[a-z_]+", e)}
    exported = {name for name, _ in scrape(engine_gw.url)}
    assert len(wanted) >= 10 and wanted <= exported, wanted - exported
