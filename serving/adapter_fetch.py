"""Engines on other hosts: an adapter is fetched from the blob store into the engine host's own cache before vLLM
loads it, so an engine never needs the gateway's filesystem.

``FetchAdapters`` is an ASGI middleware loaded into vLLM's OpenAI server (``--middleware``, beside ``RequireKey``,
which stays outermost: an unauthenticated caller makes it fetch nothing). A ``POST /v1/load_lora_adapter`` whose
``lora_path`` is a blob URL of this engine's store (``s3://bucket/prefix/<key>``, what gateways and workers send
when ``blob_url`` is set, see ``storage.engines.engine_adapter_path``) is answered by fetching ``<key>`` into
``<data_dir>/blob-cache/objects/<key>`` (``S3BlobStore.local_path``: once per key and host, under a file lock) and
handing vLLM that directory instead. Adapter keys are immutable (``models/<job>/<claim>/final``, written once
before any row names them) and the engine-side name *is* the key, so a cached copy is never stale and two
versions of a model never share a name. The copy is pinned while vLLM holds the adapter (vLLM may read it again)
and removed from the host once vLLM unloads it (evicted, or its model deleted): the engine host's cache holds the
adapters it serves, not every adapter it ever served, and a deleted model leaves nothing behind.

The engine's settings come from the file ``serving.engine_main`` was started with (``TUNEGATE_ENGINE_SETTINGS``):
``blob_url`` and ``[s3]`` as on the gateway (the secret is in that mode-0600 file, never on a command line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from serving.engine_api import LOAD_PATH, UNLOAD_PATH

SETTINGS_VAR = "TUNEGATE_ENGINE_SETTINGS"
MAX_BODY = 64 * 1024
# What the gateway hears (and may pass on to a tenant): no key, bucket, endpoint or S3 error text, which stay in
# this engine's log.
NOT_IN_STORE = "The adapter is not in the blob store."
FETCH_FAILED = "Fetching the adapter from the blob store failed; the engine's log has the cause."
log = logging.getLogger("tunegate.engine")


def _store() -> Any:
    from storage.blobs import make_blob_store
    from storage.settings import Settings

    settings = Settings.model_validate_json(Path(os.environ[SETTINGS_VAR]).read_text())
    return make_blob_store(settings) if settings.blob_url else None


class FetchAdapters:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.store = _store() if os.environ.get(SETTINGS_VAR) else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        store = self.store
        if store is None or scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
        elif scope.get("path") == LOAD_PATH:
            await self._load(store, scope, receive, send)
        elif scope.get("path") == UNLOAD_PATH:
            await self._unload(store, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _unload(self, store: Any, scope: dict, receive: Any, send: Any) -> None:
        body = await _read_body(receive)
        try:
            request = json.loads(body)
            name = request.get("lora_name") if isinstance(request, dict) else None
        except ValueError:
            name = None
        status: list[int] = []

        async def noted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(_with_length(scope, len(body)), _replay(body, receive), noted)
        if isinstance(name, str) and name in store.pinned and status and status[0] in (200, 404):
            store.pinned.discard(name)
            try:
                await asyncio.to_thread(store.evict, name)
            except (OSError, ValueError):
                log.exception("removing the local copy of %s failed", name)

    async def _load(self, store: Any, scope: dict, receive: Any, send: Any) -> None:
        body = await _read_body(receive)
        try:
            request = json.loads(body)
            path = request.get("lora_path") if isinstance(request, dict) else None
        except ValueError:
            path = None
        prefix = store.url + "/"
        if isinstance(path, str) and path.startswith(prefix):
            key = path[len(prefix) :]
            try:
                local = await asyncio.to_thread(store.local_path, key)
            except (FileNotFoundError, ValueError) as exc:
                log.warning("adapter %s is not in the blob store: %s", key, exc)
                await _error(send, 404, NOT_IN_STORE)
                return
            except Exception:  # the store is unreachable or refused us: the gateway retries another replica
                log.exception("fetching adapter %s failed", key)
                await _error(send, 503, FETCH_FAILED)
                return
            request["lora_path"] = str(local)
            body = json.dumps(request).encode()
            store.pinned.add(key)  # vLLM holds it from now on: trim must leave it
        await self.app(_with_length(scope, len(body)), _replay(body, receive), send)


async def _read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            break  # not a load request of ours: vLLM gets what arrived and refuses it
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """The (rewritten) body once, then the connection's own messages (its disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _with_length(scope: dict, length: int) -> dict:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


async def _error(send: Any, status: int, message: str) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "NotFoundError" if status == 404 else "ServiceUnavailable",
                "code": status,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
