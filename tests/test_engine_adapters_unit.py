"""Worker-side adapter loads (``finetune.evals.engine_adapters``) at the engine's HTTP seam (``httpx.MockTransport``
answering as vLLM does): they keep ``serving.max_adapters_per_engine`` counted from the engine's own list, evict
what the process does not use, and unload at the end only what they loaded. The real-engine paths are in
test_evals_serving.py and test_fine_tuning.py (job-end evaluation)."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from finetune.evals.engine_adapters import EngineAdapters
from serving.engine_api import EngineAPIError
from storage.engines import EngineAddress

_urls = itertools.count()


class Engine:
    """vLLM's runtime-LoRA routes over a list of loaded names (oldest first); ``calls`` records (path, name)."""

    def __init__(self, *loaded: str) -> None:
        self.address = EngineAddress(f"http://engine-{next(_urls)}.test:8000", "k")
        self.loaded, self.calls = list(loaded), []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer k"
        if request.url.path == "/v1/models":
            cards = [{"id": "base", "parent": None}] + [{"id": n, "parent": "base"} for n in self.loaded]
            return httpx.Response(200, json={"object": "list", "data": cards})
        name = json.loads(request.content)["lora_name"]
        self.calls.append((request.url.path.rsplit("/", 1)[1], name))
        if request.url.path == "/v1/load_lora_adapter":
            if name in self.loaded:
                return httpx.Response(
                    400, json={"error": {"message": f"The lora adapter '{name}' has already been loaded."}}
                )
            self.loaded.append(name)
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if name not in self.loaded:
            return httpx.Response(404, json={"error": {"message": f"The lora adapter '{name}' cannot be found."}})
        self.loaded.remove(name)
        return httpx.Response(200, text="Success")

    def holder(self, limit: int, **kw: bool) -> EngineAdapters:
        return EngineAdapters(limit, transport=self.transport, **kw)

    def ensure(self, holder: EngineAdapters, name: str) -> None:
        holder.ensure(self.address, name, f"/adapters/{name}")


def test_a_full_engine_unloads_its_oldest_load_first_and_the_worker_unloads_its_own_at_the_end() -> None:
    engine = Engine("g1", "g2")  # loaded by gateways
    with engine.holder(2) as run:
        engine.ensure(run, "w")
        assert engine.loaded == ["g2", "w"], "the limit holds: the oldest load made room"
        engine.ensure(run, "w")  # used again in the same run: nothing asked
    assert engine.loaded == ["g2"]
    assert engine.calls == [("unload_lora_adapter", "g1"), ("load_lora_adapter", "w"), ("unload_lora_adapter", "w")]


def test_an_adapter_someone_else_loaded_is_used_as_it_is_and_left_loaded() -> None:
    engine = Engine("x")
    with engine.holder(1) as run:
        engine.ensure(run, "x")
    assert engine.loaded == ["x"] and engine.calls == []


def test_adapters_this_process_uses_are_never_evicted() -> None:
    engine = Engine("g")
    model, judge = engine.holder(2), engine.holder(2)
    engine.ensure(model, "a")
    engine.ensure(judge, "b")  # the engine is full: g goes, not a (in use)
    assert engine.loaded == ["a", "b"]
    with pytest.raises(EngineAPIError, match="all in use by this worker"):
        engine.ensure(engine.holder(2), "c")
    assert engine.loaded == ["a", "b"]
    model.release()
    judge.release()
    assert engine.loaded == []


def test_a_shared_adapter_is_unloaded_by_its_last_user_only() -> None:
    engine = Engine()
    first, second = engine.holder(4), engine.holder(4)
    engine.ensure(first, "s")
    engine.ensure(second, "s")  # the engine has it (this process loaded it): no second load
    first.release()
    assert engine.loaded == ["s"], "still used by the second holder"
    second.release()
    assert engine.loaded == [] and engine.calls == [("load_lora_adapter", "s"), ("unload_lora_adapter", "s")]


def test_a_kept_adapter_stays_and_is_the_first_to_make_room() -> None:
    engine = Engine("g")
    with engine.holder(2, keep=True) as job_end:  # the job-end evaluation: its model is served next
        engine.ensure(job_end, "k")
    assert engine.loaded == ["g", "k"]
    with engine.holder(2) as run:
        engine.ensure(run, "r")
        assert engine.loaded == ["g", "r"], "this process's leftover goes before the older gateway load"


def test_engine_failures_are_one_error_type() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": []})
        return httpx.Response(400, json={"error": {"message": "bad adapter"}})

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    address = EngineAddress("http://engine-refuses.test:8000")
    with pytest.raises(EngineAPIError) as refused:
        EngineAdapters(2, transport=httpx.MockTransport(refuse)).ensure(address, "x", "/adapters/x")
    assert (refused.value.status, refused.value.message) == (400, "bad adapter")
    with pytest.raises(EngineAPIError) as down:
        EngineAdapters(2, transport=httpx.MockTransport(unreachable)).ensure(address, "x", "/adapters/x")
    assert down.value.unreachable and "connection refused" in down.value.message
