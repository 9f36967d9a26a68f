"""The engine-side fetch of adapters from the store (``serving.adapter_fetch.FetchAdapters``) at its ASGI seam: a
failed fetch answers the gateway without the store's details (they stay in the engine's log)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from serving.adapter_fetch import FETCH_FAILED, NOT_IN_STORE, FetchAdapters
from serving.engine_api import LOAD_PATH


class Store:
    url = "s3://bucket/prefix"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def local_path(self, key: str) -> Path:
        raise self.error


def _load(store: Store) -> tuple[int, dict]:
    async def engine(scope, receive, send) -> None:  # noqa: ANN001
        raise AssertionError("vLLM must not be asked")

    fetch = FetchAdapters(engine)
    fetch.store = store
    body = json.dumps({"lora_name": "models/j/c/final", "lora_path": "s3://bucket/prefix/models/j/c/final"}).encode()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(fetch({"type": "http", "path": LOAD_PATH, "method": "POST", "headers": []}, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (RuntimeError("botocore: AccessDenied for bucket secret-bucket at http://10.0.0.9:9000"), 503, FETCH_FAILED),
        (FileNotFoundError("/var/tunegate/blob-cache/objects/models/j/c/final"), 404, NOT_IN_STORE),
    ],
)
def test_a_failed_fetch_tells_the_gateway_nothing_of_the_store(
    error: Exception, status: int, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tunegate.engine"):
        got, body = _load(Store(error))
    assert got == status and body["error"]["message"] == message
    assert str(error) in caplog.text, "the cause is in the engine's log"
