"""EnginePool at its HTTP seam (``httpx.MockTransport``), beside the real-engine tests in test_serving.py: its
background tasks survive unexpected errors, and adapter loading keeps its bookkeeping and LRU limit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from serving.adapters import Adapter
from serving.catalog import Catalog
from serving.pool import EnginePool, Target
from storage.blobs import LocalBlobStore
from storage.db import Database
from storage.engines import EngineRegistry
from storage.migrate import upgrade
from storage.settings import Settings

URL = "http://engine.test:8000"


def _pool(tmp_path: Path, handler, **serving) -> EnginePool:  # noqa: ANN001
    settings = Settings(
        data_dir=tmp_path,
        base_models={"m": {"source": str(tmp_path), "engine_urls": [URL]}},
        serving={"health_interval_seconds": 0.05, "warm_poll_seconds": 0.05, **serving},
    )
    db = Database(settings.resolved_database_url)
    upgrade(db)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return EnginePool(
        settings, Catalog(db, settings), LocalBlobStore(settings.resolved_blob_dir), EngineRegistry(db), http=http
    )


async def _until(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_a_health_watcher_that_dies_of_an_unexpected_error_is_restarted(tmp_path: Path) -> None:
    calls = {"health": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            calls["health"] += 1
            if calls["health"] <= 2:  # not an httpx error: before the fix it ended the watcher for good
                raise RuntimeError("a bug in the health check")
            return httpx.Response(200)
        return httpx.Response(404)

    async def scenario() -> None:
        pool = _pool(tmp_path, handler)
        await pool.start()
        try:
            replica = pool.replicas["m"][0]
            await _until(lambda: replica.state == "ready", timeout=15)
            assert calls["health"] >= 3
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_adapter_loads_keep_bookkeeping_and_the_lru_limit(tmp_path: Path) -> None:
    requests: list[tuple[str, dict]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        body = json.loads(request.content or b"{}")
        requests.append((request.url.path, body))
        if request.url.path == "/v1/load_lora_adapter" and body["lora_name"] == "b":
            return httpx.Response(400, json={"error": {"message": "The lora adapter 'b' has already been loaded."}})
        return httpx.Response(200, text="Success")

    async def scenario() -> None:
        pool = _pool(tmp_path, handler, max_adapters_per_engine=2)
        await pool.start()
        try:
            replica = pool.replicas["m"][0]
            await _until(lambda: replica.state == "ready")
            spec = pool.settings.base_models["m"]
            for name in ("a", "b", "a", "c"):
                await pool.acquire(Target(f"ft:{name}", "m", spec, Adapter(name, f"/adapters/{name}", 8)))
            loads = [b["lora_name"] for p, b in requests if p == "/v1/load_lora_adapter"]
            unloads = [b["lora_name"] for p, b in requests if p == "/v1/unload_lora_adapter"]
            assert loads == ["a", "b", "c"], "a second use of a loaded adapter must not load it again"
            assert unloads == ["b"], "the least recently used adapter goes first"
            assert list(replica.loaded) == ["a", "c"]
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_concurrent_loads_of_different_adapters_stay_within_the_limit(tmp_path: Path) -> None:
    """Each adapter has its own lock: the limit must still count loads in progress, or four requests for four new
    adapters at once would all see room and load."""
    engine: set[str] = set()
    peak = [0]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": n, "parent": "m"} for n in sorted(engine)]})
        body = json.loads(request.content or b"{}")
        if request.url.path == "/v1/load_lora_adapter":
            await asyncio.sleep(0.05)  # a load takes a while: the others arrive meanwhile
            engine.add(body["lora_name"])
            peak[0] = max(peak[0], len(engine))
        elif request.url.path == "/v1/unload_lora_adapter":
            engine.discard(body["lora_name"])
        return httpx.Response(200, text="Success")

    async def scenario() -> None:
        pool = _pool(tmp_path, handler, max_adapters_per_engine=2)
        await pool.start()
        try:
            replica = pool.replicas["m"][0]
            await _until(lambda: replica.state == "ready")
            spec = pool.settings.base_models["m"]
            await asyncio.gather(
                *(pool.acquire(Target(f"ft:{n}", "m", spec, Adapter(n, f"/adapters/{n}", 8))) for n in "abcd")
            )
            assert peak[0] <= 2, f"{peak[0]} adapters were loaded at once on an engine that allows 2"
            assert len(replica.loaded) <= 2 and set(replica.loaded) == engine
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_a_refused_adapter_is_a_clear_400(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(400, json={"error": {"message": "bad adapter"}})

    async def scenario() -> None:
        from storage.errors import InvalidRequest

        pool = _pool(tmp_path, handler)
        await pool.start()
        try:
            await _until(lambda: pool.replicas["m"][0].state == "ready")
            target = Target("ft:x", "m", pool.settings.base_models["m"], Adapter("x", "/adapters/x", 8))
            with pytest.raises(InvalidRequest) as err:
                await pool.acquire(target)
            assert err.value.code == "adapter_not_servable" and "bad adapter" in err.value.message
            assert "x" not in pool.replicas["m"][0].loaded
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_a_replica_that_cannot_fetch_the_adapter_hands_over_and_the_tenant_sees_no_store_details(
    tmp_path: Path,
) -> None:
    """A load answered 503 (the engine's fetch from the store failed, ``serving.adapter_fetch``) or 500 goes to
    the next replica of the adapter's ranking; when every replica fails, the error says so without the engine's
    words (a bucket, an endpoint, a path), which go to the log."""
    other = "http://engine2.test:8000"
    failing: set[str] = set()
    loads: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/health", "/v1/models"):
            return httpx.Response(200, json={"data": []})
        loads.append(f"{request.url.scheme}://{request.url.host}:{request.url.port}")
        if loads[-1] in failing:
            return httpx.Response(
                503, json={"error": {"message": "S3 said: NoSuchBucket secret-bucket at http://10.0.0.9:9000"}}
            )
        return httpx.Response(200, text="Success")

    async def scenario() -> None:
        from serving.placement import ranking
        from storage.errors import Unavailable

        pool = _pool(tmp_path, handler)
        pool.settings.base_models["m"].engine_urls.append(other)
        await pool.start()
        try:
            await _until(lambda: all(r.state == "ready" for r in pool.replicas["m"]))
            spec = pool.settings.base_models["m"]
            target = Target("ft:x", "m", spec, Adapter("x", "/adapters/x", 8))
            home, second = ranking("x", pool.replicas["m"], lambda r: r.url)
            failing.add(home.url)
            assert await pool.acquire(target) is second
            assert loads == [home.url, second.url] and "x" in second.loaded and "x" not in home.loaded
            failing.add(second.url)
            second.loaded.clear()
            with pytest.raises(Unavailable) as err:
                await pool.acquire(target)
            assert err.value.code == "engine_unavailable" and "ft:x" in err.value.message
            assert "secret-bucket" not in err.value.message and "10.0.0.9" not in err.value.message
        finally:
            await pool.stop()

    asyncio.run(scenario())
