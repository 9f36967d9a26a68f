"""The engine pool: model name → (base, adapter) → a ready replica with that adapter loaded.

    resolve(org, model)   the caller's model id (a base's alias, a model shared with it) → Target (another
                          organization's model is "not found")
    acquire(target)       a ready replica of the base, preferring one that has the adapter; loads it there if
                          needed, once, under a per-(replica, adapter) lock
    forget(entry)         a deleted model: unloaded from every replica
    warm loop             new fine-tuned models are loaded as soon as their job registers them

The engine's adapter endpoints are spoken by ``serving.engine_api`` (the workers' loads use it too); the policy — LRU,
locks, ``max_adapters_per_engine`` counted from the engine's own list — is here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from serving import metrics
from serving.adapters import Adapter, adapter_for
from serving.catalog import Catalog, ModelEntry
from serving.engine_api import EngineAPI, EngineAPIError
from serving.engines import ExternalEngine, LocalEngine, Replica
from serving.placement import choose, homes_of, ranking
from storage.blobs import BlobStore
from storage.engines import EngineRegistry
from storage.errors import InvalidRequest, NotFound, TunegateError, Unavailable, UpstreamFailed
from storage.settings import BaseModelSpec, Settings

log = logging.getLogger("tunegate.serving")
RESOLVE_TTL_SECONDS = 2.0
# load failures of one replica (not reachable, fetch from the store failed, engine error, file not readable there)
_LOAD_ELSEWHERE = ("engine_unavailable", "engine_error", "model_unavailable")


@dataclass(frozen=True)
class Target:
    model: str  # the caller's id, echoed in every response
    base_model: str
    spec: BaseModelSpec
    adapter: Adapter | None

    @property
    def engine_model(self) -> str:
        return self.adapter.name if self.adapter else self.base_model


class EnginePool:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        blobs: BlobStore,
        registry: EngineRegistry,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """``http``: the client for every engine call (health, adapter loads, requests); by default one is built at
        ``start`` from the serving settings — tests pass one over ``httpx.MockTransport``."""
        self.settings, self.catalog, self.blobs, self.registry = settings, catalog, blobs, registry
        self.replicas: dict[str, list[Replica]] = {}
        self.http: httpx.AsyncClient | None = http
        self._tasks: list[asyncio.Task[None]] = []
        self._resolved: dict[tuple[str, str], tuple[float, Target]] = {}
        self._warming: set[asyncio.Task[None]] = set()
        self._loaded_at: dict[tuple[str, str], float] = {}  # (replica url, adapter) → when this gateway loaded it

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        serving = self.settings.serving
        self.http = http = self.http or httpx.AsyncClient(
            timeout=httpx.Timeout(serving.request_timeout_seconds, connect=serving.connect_timeout_seconds),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        settings_file = None
        for model_id, spec in self.settings.base_models.items():
            if spec.engine_urls:
                key = spec.engine_api_key.get_secret_value() if spec.engine_api_key else None
                replicas = [
                    Replica(model_id, url, local=False, kind=spec.engine, api_key=key) for url in spec.engine_urls
                ]
                for replica in replicas:
                    self._spawn(
                        f"health of {replica.url}", ExternalEngine(replica, http, serving.health_interval_seconds).run
                    )
            elif serving.local_engines:
                settings_file = settings_file or self.settings.write_for_child(f"engines-{id(self):x}", database=False)
                replica = Replica(model_id, "http://127.0.0.1:0", local=True, kind=spec.engine)
                replicas = [replica]
                self._spawn(f"engine of {model_id}", LocalEngine(replica, http, self.settings, settings_file).run)
            else:
                replicas = []
            self.replicas[model_id] = replicas
        self._spawn("adapter warm-up", self._warm_new_models)
        self._spawn("engine adapter lists", self._sync_adapters)
        self._spawn("engine registry", self._publish)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.http is not None:
            await self.http.aclose()

    def _spawn(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._tasks.append(asyncio.create_task(_supervised(name, run), name=name))

    def status(self) -> list[dict[str, object]]:
        """Each replica, with its adapters (the engine's own list, refreshed every health interval) split into
        those whose home it is (rendezvous placement over the ready replicas) and those spilled onto it."""
        described = []
        for replicas in self.replicas.values():
            ready = [r for r in replicas if r.state == "ready"]
            for replica in replicas:
                row = replica.describe()
                home = [a for a in replica.loaded if replica in self._homes(a, ready)]
                row["placement"] = {"home": home, "spilled": [a for a in replica.loaded if a not in home]}
                described.append(row)
        return described

    def _homes(self, adapter: str, ready: list[Replica]) -> list[Replica]:
        return homes_of(adapter, ready, _ident, self.settings.serving.adapter_homes)

    # --- routing -----------------------------------------------------------------------------------------
    async def resolve(self, organization_id: str, model: str) -> Target:
        key = (organization_id, model)
        hit = self._resolved.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        base_id = self.settings.base_model_id(model)
        if base_id is not None:
            target = Target(model, base_id, self.settings.base_models[base_id], None)
        else:
            entry = await asyncio.to_thread(self.catalog.get, organization_id, model)
            target = self._target(entry)
            if entry.owned_by != organization_id:
                return target  # shared by a permission: looked up each time, so that revoking it ends access at once
        self._resolved[key] = (time.monotonic() + RESOLVE_TTL_SECONDS, target)
        return target

    def _target(self, entry: ModelEntry) -> Target:
        spec = self.settings.base_models.get(entry.base_model)
        if spec is None or entry.adapter_key is None:
            raise NotFound(
                f"The model '{entry.id}' is not served here: its base model '{entry.base_model}' is not configured.",
                param="model",
                code="model_not_found",
            )
        adapter = adapter_for(entry.id, entry.adapter_key, self.blobs, self.settings)
        return Target(entry.id, entry.base_model, spec, adapter)

    async def acquire(self, target: Target) -> Replica:
        """A replica to send ``target``'s request to, with its adapter loaded. A replica that cannot load it (not
        reachable, its fetch from the store failed, it failed) hands over to the next in the adapter's ranking; an
        adapter the engine refuses (400) would be refused anywhere."""
        replica = self.pick(target)
        if target.adapter is None:
            return replica
        tried: list[Replica] = []
        while True:
            try:
                await self.ensure_loaded(replica, target)
                return replica
            except TunegateError as exc:
                if exc.code not in _LOAD_ELSEWHERE:
                    raise
                tried.append(replica)
                ready = [r for r in self.replicas.get(target.base_model, []) if r.state == "ready" and r not in tried]
                if not ready:
                    raise
                replica = ranking(target.adapter.name, ready, _ident)[0]
                log.warning(
                    "loading %s on %s failed (%s); trying %s", target.model, tried[-1].url, exc.message, replica.url
                )

    def pick(self, target: Target) -> Replica:
        replicas = self.replicas.get(target.base_model, [])
        ready = [r for r in replicas if r.state == "ready"]
        if not ready:
            raise self._unavailable(target, replicas)
        if target.adapter is not None:  # its home replica(s), the same in every gateway (serving/placement.py)
            serving = self.settings.serving
            return choose(
                target.adapter.name,
                ready,
                _ident,
                _in_flight,
                homes=serving.adapter_homes,
                spill_at=serving.spill_in_flight,
            )
        return min(ready, key=lambda r: r.in_flight)

    def _unavailable(self, target: Target, replicas: list[Replica]) -> Unavailable:
        if not replicas:
            return Unavailable(
                f"No engine serves '{target.base_model}': local engines are off (serving.local_engines) and the "
                "model has no engine_urls.",
                code="engine_unavailable",
                retry_after=30,
            )
        starting = any(r.state == "starting" for r in replicas)
        why = "is starting" if starting else f"is down ({replicas[0].detail})"
        return Unavailable(
            f"The engine for '{target.base_model}' {why}; retry shortly.",
            code="engine_unavailable",
            retry_after=10 if starting else 5,
        )

    async def ensure_loaded(self, replica: Replica, target: Target) -> None:
        adapter = target.adapter
        assert adapter is not None and self.http is not None
        if adapter.name in replica.loaded:
            replica.loaded.move_to_end(adapter.name)
            return
        lock = replica.locks.setdefault(adapter.name, asyncio.Lock())
        async with lock:
            if adapter.name in replica.loaded:
                return
            await self._refresh_adapters(replica)  # what other gateways loaded counts against the limit too
            if adapter.name in replica.loaded:
                return
            await self._load(replica, target)

    async def _load(self, replica: Replica, target: Target) -> None:
        """Evict past the limit, then load — one adapter at a time per replica: each adapter has its own lock, but
        the limit is the replica's, so loads of different adapters must not all see the same free room."""
        adapter = target.adapter
        assert adapter is not None and self.http is not None
        async with replica.loads:
            while len(replica.loaded) >= self.settings.serving.max_adapters_per_engine:
                await self._unload(replica, next(iter(replica.loaded)))
                metrics.ADAPTER_UNLOADS.labels(replica.base_model, "evicted").inc()
            started = time.perf_counter()
            try:
                await EngineAPI(self.http).load(replica.url, replica.auth, adapter.name, adapter.path)
            except EngineAPIError as exc:
                if exc.unreachable:
                    replica.set_state("down", f"load_lora_adapter failed: {exc.message}")
                    raise Unavailable(
                        f"The engine for '{target.base_model}' is not reachable; retry shortly.",
                        code="engine_unavailable",
                    ) from exc
                metrics.ADAPTER_LOADS.labels(replica.base_model, "failed").inc()
                raise _load_error(target, exc) from None
            metrics.ADAPTER_LOADS.labels(replica.base_model, "loaded").inc()
            replica.loaded[adapter.name] = adapter.path
            self._loaded_at[(replica.url, adapter.name)] = time.monotonic()
            log.info("loaded %s on %s in %.0f ms", target.model, replica.url, (time.perf_counter() - started) * 1e3)

    async def _unload(self, replica: Replica, name: str) -> None:
        assert self.http is not None
        replica.loaded.pop(name, None)
        replica.locks.pop(name, None)
        try:
            await EngineAPI(self.http).unload(replica.url, replica.auth, name)
        except (EngineAPIError, httpx.HTTPError) as exc:
            log.warning("unloading %s from %s failed: %r", name, replica.url, exc)

    async def forget(self, entry: ModelEntry) -> None:
        """A deleted model: drop cached routes to it and unload it from every replica."""
        for key in [k for k, (_, t) in self._resolved.items() if t.model == entry.id]:
            self._resolved.pop(key, None)
        if entry.adapter_key is None:
            return
        for replicas in self.replicas.values():
            for replica in replicas:
                if entry.adapter_key in replica.loaded:
                    await self._unload(replica, entry.adapter_key)
                    metrics.ADAPTER_UNLOADS.labels(replica.base_model, "deleted").inc()

    async def _sync_adapters(self) -> None:
        """Keep each replica's loaded set the engine's own (``/v1/models``), not this gateway's belief: adapters
        other gateways loaded or unloaded show here within a health interval."""
        while True:
            for replicas in list(self.replicas.values()):
                for replica in replicas:
                    if replica.state == "ready" and replica.kind == "vllm":
                        await self._refresh_adapters(replica)
            await asyncio.sleep(self.settings.serving.health_interval_seconds)

    async def _refresh_adapters(self, replica: Replica) -> None:
        """Reconcile ``replica.loaded`` with the engine's list: adapters new to us go in as least recently used,
        adapters gone from the engine go out (unless this gateway loaded them after the list was asked for)."""
        if self.http is None or replica.kind != "vllm":
            return
        asked = time.monotonic()
        try:
            names = set(
                await EngineAPI(self.http).adapters(
                    replica.url, replica.auth, timeout=self.settings.serving.connect_timeout_seconds
                )
            )
        except (EngineAPIError, httpx.HTTPError):
            return  # the health watcher deals with an engine that does not answer
        for name in list(replica.loaded):
            if name not in names and self._loaded_at.get((replica.url, name), 0.0) < asked:
                replica.loaded.pop(name, None)
                self._loaded_at.pop((replica.url, name), None)
        for name in sorted(names - set(replica.loaded)):
            replica.loaded[name] = ""
            replica.loaded.move_to_end(name, last=False)

    def lost_adapter(self, replica: Replica, target: Target) -> None:
        """The engine no longer knows the adapter (it restarted behind our back): load it again next time."""
        if target.adapter is not None:
            replica.loaded.pop(target.adapter.name, None)

    async def _publish(self) -> None:
        """Tell workers where the engines are (they generate through them for job-end evaluations)."""
        while True:
            replicas = [(r.url, r.base_model, r.state, r.api_key) for rs in self.replicas.values() for r in rs]
            if replicas:
                try:
                    await asyncio.to_thread(self.registry.publish, replicas)
                except Exception:  # the next round retries
                    log.exception("publishing engine states failed")
            await asyncio.sleep(self.settings.serving.health_interval_seconds)

    # --- warm-up -----------------------------------------------------------------------------------------
    async def _warm_new_models(self) -> None:
        """Load each newly registered fine-tuned model at once, so its first request does not wait for it."""
        seen: int | None = None
        while True:
            try:
                if seen is None:  # inside the try: a database away at start-up must not end the loop
                    seen = await asyncio.to_thread(self.catalog.newest_seq)
                    continue
                await asyncio.sleep(self.settings.serving.warm_poll_seconds)
                entries = await asyncio.to_thread(self.catalog.added_since, seen)
            except Exception:  # a database hiccup must not end the loop
                log.exception("warm-up: listing new models failed")
                await asyncio.sleep(self.settings.serving.warm_poll_seconds)
                continue
            for entry in entries:
                seen = max(seen, entry.seq)
                if entry.kind == "fine-tuned":
                    task = asyncio.create_task(self._warm(entry))
                    self._warming.add(task)
                    task.add_done_callback(self._warming.discard)

    async def _warm(self, entry: ModelEntry) -> None:
        try:
            target = self._target(entry)
            await self.acquire(target)
        except TunegateError as exc:
            log.info("warm-up of %s skipped: %s", entry.id, exc.message)
        except Exception:
            log.exception("warm-up of %s failed", entry.id)


async def _supervised(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background task for the pool's lifetime: one that dies of an unexpected error (not a cancel) is
    logged and started again with backoff, so a replica never stays "starting" forever behind a dead watcher."""
    backoff = 1.0
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            log.exception("background task '%s' died; restarting it in %.0f s", name, backoff)
            await asyncio.sleep(backoff)


def _ident(replica: Replica) -> str:
    return replica.url


def _in_flight(replica: Replica) -> int:
    return replica.in_flight


def _load_error(target: Target, refused: EngineAPIError) -> TunegateError:
    """What the tenant is told. The engine's own words go to the log, except for a refusal (400: rank, format),
    which is about the adapter itself: a missing file's path or a store's error says nothing to a tenant and shows
    where and how adapters are kept."""
    message = refused.message
    if refused.status == 400:
        return InvalidRequest(
            f"The engine refused the adapter of '{target.model}': {message}", param="model", code="adapter_not_servable"
        )
    log.warning(
        "the engine for %s could not load %s (HTTP %s): %s", target.base_model, target.model, refused.status, message
    )
    if refused.status == 404:
        return InvalidRequest(
            f"The engine for '{target.base_model}' cannot read the adapter of '{target.model}'. "
            "Engines on other hosts need blob_url (an S3 store they fetch from) or "
            "serving.engine_blob_dir.",
            param="model",
            code="model_unavailable",
        )
    if refused.status == 503:  # the engine could not fetch it from the store: a moment's trouble, most likely
        return Unavailable(
            f"The engine for '{target.base_model}' could not fetch the adapter of '{target.model}'; retry shortly.",
            code="engine_unavailable",
        )
    return UpstreamFailed(f"The engine failed to load '{target.model}'.", code="engine_error")
