"""A job trained and served with every blob in S3 (the real SeaweedFS server): the training file uploaded through
the gateway, the training child reading its local copy, the adapter committed to the store, and the vLLM engine
fetching it from the store into its own cache (serving/adapter_fetch.py) before loading it — no shared blob
directory anywhere. One gateway with its engine and embedded worker; the tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.finetune_support import MEMORIZE, TINY, chat_jsonl, qa_pairs, upload, wait_for
from tests.s3_support import S3Server
from tests.serving_support import serving_env, wait_engines_ready
from tests.support import LiveGateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server.start(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(s3: S3Server, tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data_dir = tmp_path_factory.mktemp("s3-serving")
    gateway = LiveGateway(data_dir, f"sqlite:///{data_dir / 'tunegate.db'}",
                          **serving_env(tiny_model, TUNEGATE_WORKER__LOG_EVERY_STEPS="10"), **s3.env("serving"))
    gateway.start()
    wait_engines_ready(gateway)
    yield gateway
    gateway.stop()


def test_a_job_trained_and_served_with_blobs_in_s3(s3: S3Server, gw: LiveGateway) -> None:
    _, _, key = gw.new_org_key("s3-train")
    client = gw.client(key)
    pairs = qa_pairs(20)
    file_id = upload(client, chat_jsonl(pairs))
    job = client.fine_tuning.jobs.create(model=TINY, training_file=file_id, suffix="s3",
                                         method={"type": "supervised", "supervised": {"hyperparameters": MEMORIZE}})
    done = wait_for(client, job.id, ("succeeded",), timeout=600)
    objects = s3.keys("serving/models/")
    final = [k for k in objects if k.endswith("/final/adapter_config.json")]
    assert len(final) == 1, objects
    adapter_key = final[0].removeprefix("serving/").removesuffix("/adapter_config.json")
    question = [{"role": "user", "content": pairs[3][0]}]
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=question, max_tokens=12,
                                            temperature=0)
    assert answer.model == done.fine_tuned_model and pairs[3][1] in answer.choices[0].message.content
    cached = gw.data_dir / "blob-cache" / "objects" / adapter_key
    assert (cached / "adapter_model.safetensors").is_file(), "the engine fetched the adapter into its cache"
    blobs = gw.data_dir / "blobs" / "objects"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*")), "no blob on the local store"
    results = client.files.content(done.result_files[0]).content
    assert results.startswith(b"step,")

