"""Uploads stream to disk: a file far larger than the gateway's memory growth goes through intact."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import LiveGateway

SIZE = 200 * 1024 * 1024
CHUNK = b'{"text": "' + b"x" * 1000 + b'"}\n'


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _multipart(boundary: str, digest) -> Iterator[bytes]:  # noqa: ANN001
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sent = 0
    block = CHUNK * 256
    while sent < SIZE:
        piece = block[: SIZE - sent]
        digest.update(piece)
        sent += len(piece)
        yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.slow
def test_large_upload_is_streamed_not_buffered(tmp_path: Path) -> None:
    gateway = LiveGateway(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", TUNEGATE_MAX_UPLOAD_BYTES=str(SIZE + 1))
    gateway.start()
    try:
        _, _, secret = gateway.new_org_key()
        before = _peak_rss_kib(gateway.proc.pid)
        digest = hashlib.sha256()
        boundary = "tunegateboundary0123456789"
        r = httpx.post(
            f"{gateway.url}/v1/files",
            content=_multipart(boundary, digest),
            timeout=300,
            headers={"authorization": f"Bearer {secret}", "content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 200, r.text
        growth_mib = (_peak_rss_kib(gateway.proc.pid) - before) / 1024
        assert r.json()["bytes"] == SIZE
        assert growth_mib < 64, f"gateway peak memory grew by {growth_mib:.0f} MiB for a {SIZE >> 20} MiB upload"

        stored = hashlib.sha256()
        with httpx.stream(
            "GET",
            f"{gateway.url}/v1/files/{r.json()['id']}/content",
            headers={"authorization": f"Bearer {secret}"},
            timeout=300,
        ) as download:
            for block in download.iter_bytes():
                stored.update(block)
        assert stored.hexdigest() == digest.hexdigest()
    finally:
        gateway.stop()
