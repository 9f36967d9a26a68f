"""A private PostgreSQL cluster for tests that stop and restart the database (the shared one stays up)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port


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
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.root / "pg.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "immediate", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started cluster in a folder the ``postgres`` user can reach (pytest's temporary folders are root's)."""
    cluster = PrivateCluster(Path(tempfile.mkdtemp(prefix="tunegate-pg-")))
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
