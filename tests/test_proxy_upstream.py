"""The forwarding path (``serving/proxy.py`` over ``serving/upstream.py``, aiohttp) against a real HTTP server in
the test's own loop (``aiohttp.web``), without an engine: what the engine receives, how a stream comes back, and what
a client that leaves, a silent engine, a refused connection and an engine's error become. The same path against a
real vLLM engine is tested in test_serving.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from serving.catalog import Catalog
from serving.pool import EnginePool
from serving.proxy import Completions
from serving.usage import UsageRecorder
from storage.accounts import Principal
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.engines import EngineRegistry
from storage.errors import InvalidRequest, Unavailable
from storage.migrate import upgrade
from storage.settings import Settings
from storage.usage import UsageStore

CALLER = Principal(organization_id="org-test", key_id="key-test")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "engine-id",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": content}, "finish_reason": finish, "stop_reason": None, "token_ids": None}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }


@asynccontextmanager
async def gateway(tmp_path: Path, chat: Handler, **serving: Any) -> AsyncIterator[tuple[Completions, web.AppRunner]]:
    """An engine stand-in answering ``chat`` on /v1/chat/completions, a pool over it (its one replica ready),
    and the completions service."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, handler_cancellation=True)  # a handler is cancelled when its client leaves
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = Settings(
        data_dir=tmp_path,
        base_models={
            "m": {
                "source": str(tmp_path),
                "engine_urls": [f"http://127.0.0.1:{port}"],
                "engine_api_key": "engine-secret",
            }
        },
        serving={"health_interval_seconds": 60, **serving},
    )
    db = Database(settings.resolved_database_url)
    upgrade(db)
    pool = EnginePool(settings, Catalog(db, settings), LocalBlobStore(settings.resolved_blob_dir), EngineRegistry(db))
    completions = Completions(pool, UsageRecorder(UsageStore(db)))
    await pool.start()
    try:
        for _ in range(200):
            if pool.replicas["m"][0].state == "ready":
                break
            await asyncio.sleep(0.02)
        yield completions, runner
    finally:
        await pool.stop()
        await completions.close()
        await runner.cleanup()


def body(stream: bool = True, **more: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **more}


def test_a_stream_is_relayed_rewritten_and_accounted(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def chat(request: web.Request) -> web.StreamResponse:
        seen["headers"], seen["body"] = dict(request.headers), await request.json()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        usage = {"id": "engine-id", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        await response.write(event(chunk("Hel")) + event(chunk("lo", "stop")) + event(usage) + b"data: [DONE]\n\n")
        return response

    async def scenario() -> None:
        async with gateway(tmp_path, chat) as (completions, _):
            stream = await completions.create(CALLER, "chat.completions", body(), joined=True)
            assert not isinstance(stream, bytes)
            pieces = [piece async for piece in stream]
            replica = completions.pool.replicas["m"][0]
            assert replica.in_flight == 0
            pending = completions.usage._pending
            one_each = await completions.create(CALLER, "chat.completions", body())  # what the Responses API parses
            assert not isinstance(one_each, bytes)
            items = [e async for e in one_each]
            assert len(items) == 3 and all(e.count(b"data: ") == 1 and e.endswith(b"\n\n") for e in items)
        assert seen["headers"]["Authorization"] == "Bearer engine-secret", "the engine's key goes with every request"
        assert seen["headers"]["Content-Type"] == "application/json"
        assert "Accept-Encoding" not in seen["headers"], "the relay parses raw bytes: the engine must not compress"
        assert seen["body"]["model"] == "m" and seen["body"]["stream_options"]["include_usage"] is True
        assert len(pieces) == 1, "events that arrived in one read go on in one write"
        events = [e for e in pieces[0].decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Hel", "lo"], "no usage chunk unasked"
        assert all(c["id"].startswith("chatcmpl-") and c["id"] != "engine-id" and "usage" not in c for c in chunks)
        assert all("stop_reason" not in c["choices"][0] for c in chunks), "vLLM's null extras are dropped"
        assert [(r.completion_tokens, r.prompt_tokens) for r in pending[:1]] == [(2, 3)], "usage is recorded"

    asyncio.run(scenario())


def test_a_client_that_leaves_aborts_the_engine_request(tmp_path: Path) -> None:
    aborted = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:  # an engine generating for as long as somebody listens
                await response.write(event(chunk("tok")))
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionResetError):
            aborted.set()
            raise

    async def scenario() -> None:
        async with gateway(tmp_path, chat) as (completions, _):
            stream = await completions.create(CALLER, "chat.completions", body())
            assert not isinstance(stream, bytes)
            first = await stream.__anext__()
            assert b'"tok"' in first
            await stream.aclose()  # what the handler does when its client disconnects
            await asyncio.wait_for(aborted.wait(), 5)
            assert completions.pool.replicas["m"][0].in_flight == 0

    asyncio.run(scenario())


def test_an_engine_silent_past_the_read_timeout_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event(chunk("tok")))
        await asyncio.sleep(30)
        return response

    async def scenario() -> None:
        async with gateway(tmp_path, chat, request_timeout_seconds=0.3) as (completions, _):
            stream = await completions.create(CALLER, "chat.completions", body())
            assert not isinstance(stream, bytes)
            pieces = [piece async for piece in stream]
            assert completions.pool.replicas["m"][0].in_flight == 0
        last = json.loads(pieces[-1].decode().removeprefix("data: "))
        assert last["error"]["code"] == "engine_error" and "mid-stream" in last["error"]["message"]
        assert b'"tok"' in pieces[0]

    asyncio.run(scenario())


def test_a_refused_connection_marks_the_replica_down_and_is_a_503_with_retry_after(tmp_path: Path) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        raise AssertionError("never reached")

    async def scenario() -> None:
        async with gateway(tmp_path, chat) as (completions, runner):
            replica = completions.pool.replicas["m"][0]
            assert replica.state == "ready"
            await runner.cleanup()  # the engine goes away between health checks
            with pytest.raises(Unavailable) as err:
                await completions.create(CALLER, "chat.completions", body())
            assert replica.state == "down" and "connection failed" in replica.detail
            assert err.value.code == "engine_unavailable" and err.value.retry_after > 0
            assert replica.in_flight == 0

    asyncio.run(scenario())


def test_engine_answers_and_errors_keep_the_openai_shape(tmp_path: Path) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        sent = await request.json()
        if sent.get("max_tokens") == 9999:  # vLLM checks this against its max_model_len
            return web.json_response(
                {"error": {"message": "max_tokens is too large: 9999", "param": "max_tokens", "code": 400}}, status=400
            )
        return web.json_response(
            {
                "id": "engine-id",
                "object": "chat.completion",
                "model": sent["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi", "reasoning": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    async def scenario() -> None:
        async with gateway(tmp_path, chat) as (completions, _):
            answer = await completions.create(CALLER, "chat.completions", body(stream=False))
            assert isinstance(answer, bytes)
            data = json.loads(answer)
            assert data["id"].startswith("chatcmpl-") and data["choices"][0]["message"] == {
                "role": "assistant",
                "content": "hi",
            }
            with pytest.raises(InvalidRequest) as err:
                await completions.create(CALLER, "chat.completions", body(stream=False, max_tokens=9999))
            assert err.value.param == "max_tokens" and "too large" in err.value.message
            assert completions.pool.replicas["m"][0].in_flight == 0

    asyncio.run(scenario())
