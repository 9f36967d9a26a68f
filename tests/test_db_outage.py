"""A database outage is a 503 with Retry-After on every API route, and the gateway recovers without a restart.

The outage is real: a private PostgreSQL cluster (initdb in a temporary folder, its own port) that the test stops
and starts again under a live gateway — the shared server on 5432 is never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import LiveGateway, free_port

pytestmark = pytest.mark.postgres


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are required (CI installs postgres)")
    return found[-1].parent


class PrivateCluster:
    """A throwaway PostgreSQL cluster owned by the ``postgres`` user (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        self.bin, self.root, self.port = _pg_bin(), root, free_port()
        self.data = root / "pgdata"

    def _as_postgres(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "pg.log"),
                          "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateCluster, LiveGateway]]:
    root = tmp_path_factory.mktemp("pg-outage")
    # pytest's temporary folders are private to root: the postgres user needs a folder of its own it can reach.
    cluster = PrivateCluster(Path(tempfile.mkdtemp(prefix="tunegate-pg-")))
    cluster.init()
    cluster.start()
    gw = LiveGateway(root / "gw", cluster.url)
    gw.start()
    try:
        yield cluster, gw
    finally:
        gw.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


ROUTES = [
    ("GET", "/v1/models"), ("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"), ("GET", "/v1/evals"),
    ("GET", "/v1/exports"), ("GET", "/v1/fine_tuning/jobs/ftjob-x/events"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/fine_tuning/jobs"),
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
