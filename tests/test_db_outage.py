"""A database outage is a 503 with Retry-After on every API route, and the gateway recovers without a restart.

The outage is real: a private PostgreSQL cluster (initdb in a temporary folder, its own port) that the test stops
and starts again under a live gateway — the shared server on 5432 is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.pg_support import PrivateCluster, private_cluster
from tests.support import LiveGateway

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateCluster, LiveGateway]]:
    with private_cluster() as cluster:
        gw = LiveGateway(tmp_path_factory.mktemp("pg-outage") / "gw", cluster.url)
        gw.start()
        try:
            yield cluster, gw
        finally:
            gw.stop()


ROUTES = [
    ("GET", "/v1/models"),
    ("GET", "/v1/files"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/evals"),
    ("GET", "/v1/exports"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-x/events"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/fine_tuning/jobs"),
]


def test_database_down_is_503_with_retry_after_and_recovers(outage: tuple[PrivateCluster, LiveGateway]) -> None:
    cluster, gw = outage
    _, _, key = gw.new_org_key("outage")
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "training_file": "file-x"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as http:
        assert http.get("/v1/models").status_code == 200

        cluster.stop()
        for method, path in ROUTES:
            r = http.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["type"] == "service_unavailable_error" and err["code"] == "database_unavailable", err
        with gw.admin() as admin:
            assert admin.get("/admin/organizations").status_code == 503
        assert gw.proc is not None and gw.proc.poll() is None, "the gateway must survive the outage"

        cluster.start()
        deadline = time.monotonic() + 30
        while (r := http.get("/v1/models")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        assert http.get("/v1/files").status_code == 200


def test_a_cached_key_does_not_outlive_the_outage(outage: tuple[PrivateCluster, LiveGateway]) -> None:
    """A key verified just before the outage is cached (no database read per request): a request that would not
    touch the database itself (a chat with an unknown model: a 404 from memory) must still answer the outage's 503 —
    the gateway's database watch empties the cache within a second — and the key works again after."""
    from gateway.auth import WATCH_S

    cluster, gw = outage
    _, _, key = gw.new_org_key("outage-cached")
    chat = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        assert http.get("/v1/models").status_code == 200  # verified: cached for auth_cache_seconds
        assert http.post("/v1/chat/completions", json=chat).status_code == 404  # from memory, no database
        cluster.stop()
        time.sleep(2 * WATCH_S + 0.5)
        r = http.post("/v1/chat/completions", json=chat)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "database_unavailable"
        cluster.start()
        deadline = time.monotonic() + 30
        while (r := http.post("/v1/chat/completions", json=chat)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert r.status_code == 404, r.text
