"""Placement that gateways agree on (serving/placement.py, serving/pool.py): rendezvous hashing unit tests, then two
gateway processes over one Postgres, blobs in the real S3 server, and two vLLM-shaped stub replicas
(tests/lora_stub_engine.py): 20 adapters, each requested through both gateways, are loaded on their home replica
only, once, within max_adapters_per_engine counted from the engine's own list; /admin/engines shows the placement."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.placement import choose, homes_of, ranking, weight
from tests.s3_support import S3Server
from tests.support import LiveGateway, free_port

HERE = Path(__file__).parent


def _ident(name: str) -> str:
    return name


def test_weights_are_stable_across_processes() -> None:
    """sha256-based: the same in every gateway process (not Python's per-process salted hash())."""
    script = "from serving.placement import weight; print(weight('models/a/final', 'http://10.0.0.1:8000'))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=HERE.parent)
    assert int(other.stdout) == weight("models/a/final", "http://10.0.0.1:8000")


def test_rendezvous_spreads_adapters_and_moves_only_a_lost_replicas_share() -> None:
    replicas = [f"http://10.0.0.{i}:8000" for i in range(4)]
    adapters = [f"models/job-{i}/c/final" for i in range(2000)]
    home = {a: ranking(a, replicas, _ident)[0] for a in adapters}
    counts = Counter(home.values())
    assert all(400 < counts[r] < 600 for r in replicas), counts  # ~500 each
    survivors = replicas[:3]
    moved = [a for a in adapters if ranking(a, survivors, _ident)[0] != home[a]]
    assert set(moved) == {a for a in adapters if home[a] == replicas[3]}  # only the lost replica's adapters move
    assert ranking(adapters[0], list(reversed(replicas)), _ident) == ranking(adapters[0], replicas, _ident)


def test_choose_goes_home_and_spills_in_ranking_order_under_load() -> None:
    replicas = ["r1", "r2", "r3"]
    load = dict.fromkeys(replicas, 0)
    order = ranking("models/x/final", replicas, _ident)
    pick = lambda **kw: choose("models/x/final", replicas, _ident, load.__getitem__, **kw)  # noqa: E731
    assert pick(spill_at=4) == order[0]
    load[order[0]] = 4
    assert pick(spill_at=4) == order[1], "a busy home spills to the next replica of the adapter's ranking"
    load[order[1]] = 9
    assert pick(spill_at=4) == order[2]
    load[order[2]] = 5
    assert pick(spill_at=4) == order[0], "all busy: the least busy"
    assert pick(spill_at=None) == order[0], "no spilling configured: always home"
    load.update(dict.fromkeys(replicas, 0))
    load[order[0]] = 3
    assert pick(homes=2, spill_at=10) == order[1], "two homes: the less busy of them"
    assert homes_of("models/x/final", replicas, _ident, 2) == order[:2]


# --- two gateways, two replicas --------------------------------------------------------------------------------


class Stub:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = open(tmp / f"stub-{self.port}.log", "wb")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "lora_stub_engine.py"), str(self.port)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/health", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "stub engine did not start"
                time.sleep(0.1)

    def log(self) -> dict:
        return httpx.get(f"{self.url}/stub/log", timeout=5).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server.start(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


def _register(s3: S3Server, database_url: str, org_id: str, n: int, tmp: Path) -> dict[str, str]:
    """n fine-tuned models of ``org_id`` whose adapters are in S3 (blob first, then row, as a job's child does)."""
    from storage.db import Database
    from storage.ids import now
    from storage.jobs import JobStore
    from storage.s3blobs import S3BlobStore
    from storage.settings import S3Settings
    from storage.tables import FineTunedModel

    store = S3BlobStore(s3.settings()["blob_url"], S3Settings(**s3.s3_settings()), tmp / "register-cache")
    adapter = tmp / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    db = Database(database_url)
    models: dict[str, str] = {}
    try:
        for i in range(n):
            key = f"models/place-{i}/c/final"
            store.commit_dir(adapter, key)
            model_id = f"ft:stub:{org_id}:p{i}:{i:04d}"
            JobStore(db).add_model(
                FineTunedModel(
                    id=model_id,
                    organization_id=org_id,
                    base_model="stub",
                    kind="fine-tuned",
                    adapter_key=key,
                    created_at=now(),
                )
            )
            models[model_id] = key
    finally:
        db.dispose()
    return models


@pytest.mark.postgres
def test_two_gateways_load_each_adapter_on_its_home_replica_only(s3: S3Server, tmp_path: Path) -> None:
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    stubs = [Stub(tmp_path), Stub(tmp_path)]
    urls = [s.url for s in stubs]
    env = {
        "TUNEGATE_BASE_MODELS": json.dumps({"stub": {"source": "unused", "engine_urls": urls}}),
        "TUNEGATE_WORKER__EMBEDDED": "false",
        "TUNEGATE_SERVING__HEALTH_INTERVAL_SECONDS": "0.3",
        "TUNEGATE_SERVING__WARM_POLL_SECONDS": "3600",  # requests place the adapters, not warm-up
        "TUNEGATE_SERVING__MAX_ADAPTERS_PER_ENGINE": "8",
        **s3.env(),
    }
    gateways = [LiveGateway(tmp_path / f"gw{i}", url, **env) for i in range(2)]
    try:
        for gw in gateways:
            gw.start()
        org, _, secret = gateways[0].new_org_key("placement")
        models = _register(s3, url, org, 20, tmp_path)
        clients = [gw.client(secret) for gw in gateways]
        for model in models:  # each through both gateways
            for client in clients:
                answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
                assert answer.model == model
        logs = [s.log() for s in stubs]
        home = {key: ranking(key, urls, _ident)[0] for key in models.values()}
        for stub, log in zip(stubs, logs, strict=True):
            mine = {k for k, u in home.items() if u == stub.url}
            loaded_here = {entry["name"] for entry in log["loads"]}
            assert loaded_here <= mine, f"{stub.url} loaded adapters whose home is elsewhere"
            assert log["peak"] <= 8, "max_adapters_per_engine holds across gateways (the engine's own list counts)"
            assert all(entry["path"].startswith(s3.settings()["blob_url"] + "/models/") for entry in log["loads"])
            assert set(log["chats"]) == mine, "every request for an adapter went to its home"
            assert len(log["unloads"]) == max(0, len(mine) - 8), "evictions only past the limit"
        everywhere = Counter(entry["name"] for log in logs for entry in log["loads"])
        assert set(everywhere) == set(models.values())
        assert set(everywhere.values()) == {1}, "the second gateway found the adapter loaded: no second load"
        assert all(logs[i]["loads"] for i in range(2)), "both replicas are homes of some adapters"
        time.sleep(0.8)  # a sync interval: both gateways read the engines' lists
        views = []
        for gw in gateways:
            with gw.admin() as admin:
                rows = admin.get("/admin/engines").raise_for_status().json()["data"]
            views.append(
                {
                    r["url"]: (sorted(r["adapters"]), sorted(r["placement"]["home"]), r["placement"]["spilled"])
                    for r in rows
                }
            )
        assert views[0] == views[1], "both gateways see the same placement"
        for stub, log in zip(stubs, logs, strict=True):
            adapters, homes, spilled = views[0][stub.url]
            assert adapters == sorted(log["loaded"]) == homes and spilled == []
    finally:
        for gw in gateways:
            gw.stop()
        for stub in stubs:
            stub.stop()
        drop()


def test_two_pools_share_two_replicas_by_placement(tmp_path: Path) -> None:
    """The same at the pool's seam, in one process: two EnginePools (two gateways' routing) over two stub replicas
    on real HTTP; one pool's loads count against the other's max_adapters_per_engine, and an adapter unloaded by one
    disappears from the other's view at the next sync."""
    import asyncio

    from serving.adapters import Adapter
    from serving.catalog import Catalog
    from serving.pool import EnginePool, Target
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.engines import EngineRegistry
    from storage.migrate import upgrade
    from storage.settings import Settings

    stubs = [Stub(tmp_path), Stub(tmp_path)]
    urls = [s.url for s in stubs]

    def pool(name: str) -> EnginePool:
        settings = Settings(
            data_dir=tmp_path / name,
            base_models={"stub": {"source": "unused", "engine_urls": urls}},
            serving={"health_interval_seconds": 0.1, "warm_poll_seconds": 3600, "max_adapters_per_engine": 3},
        )
        db = Database(settings.resolved_database_url)
        upgrade(db)
        return EnginePool(
            settings, Catalog(db, settings), LocalBlobStore(settings.resolved_blob_dir), EngineRegistry(db)
        )

    keys = [f"models/pool-{i}/c/final" for i in range(12)]
    home = {k: ranking(k, urls, _ident)[0] for k in keys}

    async def scenario() -> None:
        pools = [pool("a"), pool("b")]
        for p in pools:
            await p.start()
        try:
            deadline = time.monotonic() + 10
            while not all(r.state == "ready" for p in pools for r in p.replicas["stub"]):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            spec = pools[0].settings.base_models["stub"]
            for i, key in enumerate(keys):  # alternate pools: each adapter through both
                for p in (pools[i % 2], pools[(i + 1) % 2]):
                    target = Target(f"ft:{key}", "stub", spec, Adapter(key, f"s3://b/{key}", 8))
                    replica = await p.acquire(target)
                    assert replica.url == home[key]
            for stub in stubs:
                log = stub.log()
                mine = [k for k in keys if home[k] == stub.url]
                assert {e["name"] for e in log["loads"]} == set(mine), "home only"
                assert len(log["loads"]) == len(mine), "each loaded once, whichever pool asked first"
                assert log["peak"] <= 3 and len(log["loaded"]) == min(3, len(mine))
            await asyncio.sleep(0.3)  # a sync: both pools see each engine's own list
            for stub in stubs:
                views = [sorted(next(r for r in p.replicas["stub"] if r.url == stub.url).loaded) for p in pools]
                assert views[0] == views[1] == stub.log()["loaded"]
        finally:
            for p in pools:
                await p.stop()

    try:
        asyncio.run(scenario())
    finally:
        for stub in stubs:
            stub.stop()


def test_workers_load_adapters_on_their_home_replica(tmp_path: Path) -> None:
    """Eval runs and batches (``EngineTargets``, the workers' one way to an engine) load a fine-tuned model's adapter
    on the replica every gateway sends it to, not on whichever replica the registry lists first; base-model work is
    spread over the replicas by the run's id."""
    from finetune.evals.runner import EngineTargets
    from storage.accounts import Accounts
    from storage.blobs import LocalBlobStore
    from storage.db import Database
    from storage.engines import EngineRegistry
    from storage.ids import now
    from storage.jobs import JobStore
    from storage.migrate import upgrade
    from storage.settings import Settings
    from storage.tables import EvalRun, FineTunedModel

    stubs = [Stub(tmp_path), Stub(tmp_path)]
    urls = [s.url for s in stubs]
    settings = Settings(
        data_dir=tmp_path / "worker",
        base_models={"stub": {"source": "unused", "engine_urls": urls}},
        serving={"max_adapters_per_engine": 8},
    )
    db = Database(settings.resolved_database_url)
    upgrade(db)
    registry = EngineRegistry(db)
    registry.publish([(u, "stub", "ready", None) for u in reversed(urls)])
    org = Accounts(db).create_org("workers").id
    models = {f"ft:stub:{org}:p{i}:{i:04d}": f"models/work-{i}/c/final" for i in range(12)}
    for model_id, key in models.items():
        JobStore(db).add_model(
            FineTunedModel(
                id=model_id,
                organization_id=org,
                base_model="stub",
                kind="fine-tuned",
                adapter_key=key,
                created_at=now(),
            )
        )

    class Worker:
        def __init__(self) -> None:
            self.settings, self.db, self.registry = settings, db, registry
            self.blobs = LocalBlobStore(settings.resolved_blob_dir)
            self.stopping = False

        def idle(self, seconds: float) -> bool:
            time.sleep(seconds)
            return False

    class Lost:
        def is_set(self) -> bool:
            return False

    try:
        runs = [EvalRun(id=f"evalrun_{i}", organization_id=org) for i in range(16)]
        with EngineTargets(Worker(), runs[0], Lost()) as targets:
            for model, key in models.items():
                engine, name = targets.target(model)
                assert (engine.url, name) == (ranking(key, urls, _ident)[0], key)
            for stub in stubs:
                log = stub.log()
                mine = {k for k in models.values() if ranking(k, urls, _ident)[0] == stub.url}
                assert {e["name"] for e in log["loads"]} == mine, "each adapter on its home replica only"
        base_engines = set()
        for run in runs:
            with EngineTargets(Worker(), run, Lost()) as targets:
                base_engines.add(targets.target("stub")[0].url)
        assert base_engines == set(urls), "runs on a base model use both replicas"
    finally:
        for stub in stubs:
            stub.stop()
        db.dispose()
