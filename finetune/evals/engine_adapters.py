"""Adapters the workers load on serving engines — eval runs, batches, the job-end evaluation, RFT rollouts — within
the same limit as the gateways.

The gateway's pool (``serving.pool``) keeps an engine within ``serving.max_adapters_per_engine`` with an LRU of the
requests it routes. Workers load adapters on the same engines (the model under test, a judge, a batch's model, a
job's new adapter, each version of an RFT policy: ``finetune.recipe.rollouts``) through the same calls
(``serving.engine_api``) and count against the same limit:

1. The engine's own list (``/v1/models``) is asked before each load, so what every gateway and worker loaded counts.
   An adapter already there is used as it is, and this holder will not unload it: someone else loaded it.
2. A full engine first unloads one adapter, chosen in this order:
   a. one this process loaded and no longer uses (left over: a kept job-end adapter, an unload that failed);
   b. the engine list's oldest load that this process does not use now. A worker sees none of the gateways'
      traffic, so load order is its best guess of the least wanted; a gateway that still routes to it gets a 404
      and loads it again (``serving.proxy``: "the engine forgot it").
   Never one this process is using (a run's model and its judges must stay loaded while it runs): when all are in
   use the load fails with ``EngineAPIError`` — the limit is below what one run needs.
3. ``release`` (the run, batch or evaluation is over) unloads what this process loaded once no holder in it uses it
   any more — eval runs and batches load adapters for a while, not to serve them. The job-end evaluation keeps its
   adapter (``keep``): its model is about to be registered and the gateways' warm-up would load it again at once;
   unloading it would only add that load to the time before the job's first answer.

Loads by one process to one engine are serialized (listing, evicting and loading see the same room). Two processes
can still both take the last free place at once, as two gateways can: each concurrent loader may overshoot by one
until the next load evicts again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, defaultdict
from types import TracebackType

import httpx

from serving.engine_api import EngineAPI, EngineAPIError
from storage.engines import EngineAddress

log = logging.getLogger("tunegate.evals")
LOAD_TIMEOUT_S = 120.0

Key = tuple[str, str]  # (engine url, adapter name)
_guard = threading.Lock()
_engine_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)  # one load sequence per engine
_in_use: Counter[Key] = Counter()  # holders in this process using each adapter
_ours: set[Key] = set()  # loaded by this process, not unloaded since


class EngineAdapters:
    """The adapters one piece of work needs on engines: ``ensure`` each before use, ``release`` once at the end
    (or use it as a context manager). Thread-safe across holders of one process; each holder is used by one thread."""

    def __init__(
        self,
        limit: int,
        *,
        keep: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = LOAD_TIMEOUT_S,
    ) -> None:
        """``limit``: ``serving.max_adapters_per_engine``; ``keep``: leave what it loaded on the engine at release;
        ``transport``: the engine's HTTP transport (tests pass ``httpx.MockTransport``)."""
        self.limit, self.keep, self.transport, self.timeout = limit, keep, transport, timeout
        self._held: dict[Key, EngineAddress] = {}

    def ensure(self, engine: EngineAddress, name: str, path: str) -> None:
        """``name`` loaded on ``engine`` (from ``path``), evicting one first if the engine is full; EngineAPIError
        when the engine cannot list, unload or load."""
        key = (engine.url, name)
        if key in self._held:
            return
        with _engine_lock(engine.url):
            if asyncio.run(self._load(engine, name, path)):
                with _guard:
                    _ours.add(key)
            with _guard:
                _in_use[key] += 1
            self._held[key] = engine

    def release(self) -> None:
        """Stop using this holder's adapters; unload those this process loaded that no holder uses any more (unless
        ``keep``). Never raises: an unload that fails leaves the adapter for the next eviction."""
        held, self._held = self._held, {}
        for key, engine in held.items():
            with _engine_lock(engine.url):
                with _guard:
                    _in_use[key] -= 1
                    if _in_use[key] <= 0:
                        del _in_use[key]
                    unload = key not in _in_use and key in _ours and not self.keep
                if not unload:
                    continue
                try:
                    asyncio.run(self._unload(engine, key[1]))
                except (EngineAPIError, httpx.HTTPError) as exc:
                    log.warning("unloading %s from %s failed: %s", key[1], engine.url, exc)
                    continue
                with _guard:
                    _ours.discard(key)

    def __enter__(self) -> EngineAdapters:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # --- one engine, under its lock ----------------------------------------------------------------------
    async def _load(self, engine: EngineAddress, name: str, path: str) -> bool:
        """True: loaded now (False: the engine had it already)."""
        async with self._client() as http:
            api = EngineAPI(http)
            held = await api.adapters(engine.url, engine.auth)
            if name in held:
                return False
            while len(held) >= self.limit:
                victim = _victim(engine.url, held, self.limit)
                await api.unload(engine.url, engine.auth, victim)
                log.info(
                    "unloaded %s from %s to make room for %s (serving.max_adapters_per_engine = %d)",
                    victim,
                    engine.url,
                    name,
                    self.limit,
                )
                held.remove(victim)
                with _guard:
                    _ours.discard((engine.url, victim))
            await api.load(engine.url, engine.auth, name, path)
            return True

    async def _unload(self, engine: EngineAddress, name: str) -> None:
        async with self._client() as http:
            await EngineAPI(http).unload(engine.url, engine.auth, name)

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, timeout=self.timeout)


def _engine_lock(url: str) -> threading.Lock:
    with _guard:
        return _engine_locks[url]


def _victim(url: str, held: list[str], limit: int) -> str:
    """Step 2 of the module docstring: a leftover of ours, else the oldest load not in use here."""
    with _guard:
        free = [name for name in held if not _in_use[(url, name)]]
        leftover = [name for name in free if (url, name) in _ours]
    if leftover:
        return leftover[0]
    if free:
        return free[0]
    raise EngineAPIError(
        f"the engine holds {len(held)} adapters, all in use by this worker: no room for another "
        f"(serving.max_adapters_per_engine = {limit})"
    )
