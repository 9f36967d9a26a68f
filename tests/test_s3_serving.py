"""Blobs in S3 end to end, with the engine on "another host": a vLLM replica started on its own by
``python -m serving.engine_main`` with its own data directory (no directory shared with the gateways) and two
gateway processes over one Postgres, all on the real SeaweedFS server. A job is trained (the training child reads
its local copy of the file from the store, the adapter goes to the store), the engine fetches the adapter from
the store into its own cache before loading it (serving/adapter_fetch.py), and both gateways chat with it on the
one replica, where it is loaded once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.finetune_support import MEMORIZE, TINY, chat_jsonl, qa_pairs, upload, wait_for
from tests.s3_support import ENGINE_KEY, EngineHost, S3Server
from tests.serving_support import serving_env
from tests.support import LiveGateway

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    # tests/test_topology.py covers the same path (S3 job, engines with their own data dirs, two gateways) in CI; this
    # smaller one (~90 s: one engine) is for working on that path alone, opt-in to keep CI's budget.
    pytest.mark.skipif(
        os.environ.get("TUNEGATE_TEST_SCALEOUT") != "1",
        reason="opt-in (TUNEGATE_TEST_SCALEOUT=1): tests/test_topology.py covers this path in CI",
    ),
]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server.start(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine(s3: S3Server, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(url, its data directory): an engine host of its own, told only the store (blob_url + [s3])."""
    host = EngineHost.start(
        s3,
        "serving",
        TINY,
        tiny_model,
        tmp_path_factory.mktemp("engine-host"),
        serving_env(tiny_model)["TUNEGATE_SERVING__ENGINE_CPUS"],
    )
    host.wait_ready()
    yield host.url, host.data_dir
    host.stop()


@pytest.fixture(scope="module")
def gateways(
    s3: S3Server, engine: tuple[str, Path], tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LiveGateway]]:
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    models = {TINY: {"source": tiny_model, "engine_urls": [engine[0]], "engine_api_key": ENGINE_KEY}}
    env = serving_env(
        tiny_model,
        TUNEGATE_BASE_MODELS=json.dumps(models),
        TUNEGATE_SERVING__LOCAL_ENGINES="false",
        TUNEGATE_WORKER__LOG_EVERY_STEPS="10",
        **s3.env("serving"),
    )
    started = [
        LiveGateway(tmp_path_factory.mktemp("gw-a"), url, **env),
        LiveGateway(tmp_path_factory.mktemp("gw-b"), url, **env, TUNEGATE_WORKER__EMBEDDED="false"),
    ]
    try:
        for gw in started:
            gw.start()
        yield started
    finally:
        for gw in started:
            gw.stop()
        drop()


def test_a_job_trained_and_served_with_blobs_in_s3_by_an_engine_elsewhere(
    s3: S3Server, engine: tuple[str, Path], gateways: list[LiveGateway]
) -> None:
    engine_url, engine_dir = engine
    _, _, key = gateways[0].new_org_key("s3-train")
    clients = [gw.client(key) for gw in gateways]
    pairs = qa_pairs(20)
    file_id = upload(clients[0], chat_jsonl(pairs))
    job = clients[0].fine_tuning.jobs.create(
        model=TINY,
        training_file=file_id,
        suffix="s3",
        method={"type": "supervised", "supervised": {"hyperparameters": MEMORIZE}},
    )
    done = wait_for(clients[0], job.id, ("succeeded",), timeout=900)
    final = [k for k in s3.keys("serving/models/") if k.endswith("/final/adapter_config.json")]
    assert len(final) == 1, final
    adapter_key = final[0].removeprefix("serving/").removesuffix("/adapter_config.json")
    question = [{"role": "user", "content": pairs[3][0]}]
    for client in clients:  # both gateways, the one replica
        answer = client.chat.completions.create(
            model=done.fine_tuned_model, messages=question, max_tokens=12, temperature=0
        )
        assert answer.model == done.fine_tuned_model and pairs[3][1] in answer.choices[0].message.content
    assert (engine_dir / "blob-cache" / "objects" / adapter_key / "adapter_model.safetensors").is_file(), (
        "the engine fetched the adapter from the store into its own cache"
    )
    cards = httpx.get(f"{engine_url}/v1/models", headers={"authorization": f"Bearer {ENGINE_KEY}"}).json()["data"]
    assert [c["id"] for c in cards if c.get("parent")] == [adapter_key], "loaded once, under its immutable key"
    for gw in gateways:  # nothing of the adapter on a gateway's disk; no local blob store in use
        assert not (gw.data_dir / "blob-cache" / "objects" / adapter_key).exists()
        blobs = gw.data_dir / "blobs" / "objects"
        assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
    assert clients[1].files.content(done.result_files[0]).content.startswith(b"step")
