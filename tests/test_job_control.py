"""Cancel, pause → resume, kill -9 of the worker mid-epoch, two workers on Postgres, bad data and settings."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import _fresh_postgres_database
from tests.finetune_support import (
    TINY,
    all_events,
    chat_jsonl,
    gateway_env,
    latest_step,
    metric_steps,
    qa_pairs,
    results_csv,
    shared_subset,
    upload,
    wait_for,
    wait_until,
)
from tests.support import LiveGateway, SpecRecorder

# 150 alpaca examples at batch size 1: 150 steps an epoch, slow enough to act on mid-epoch (the tests act at step
# 170 of 300: ~5 s before the end on a fast 2-core box at ~25 steps/s, ~12 s on CI's ~2.4× slower one)
EPOCH = 150
LONG = {"n_epochs": 40, "batch_size": 1, "learning_rate": 0.001, "cutoff_len": 256}


def supervised(hp: dict) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def assert_every_step_once(client: openai.OpenAI, job: object) -> None:
    total = next(e.data["total_steps"] for e in all_events(client, job.id) if e.type == "metrics")
    steps = [int(r["step"]) for r in results_csv(client, job)]
    assert steps == list(range(1, total + 1)), "steps repeated or lost"


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """The gateway without its embedded worker: tests start (and kill) `tunegate worker` processes."""
    data_dir = tmp_path_factory.mktemp("ctl")
    gateway = LiveGateway(
        data_dir, f"sqlite:///{data_dir / 'tunegate.db'}", **gateway_env(tiny_model, TUNEGATE_WORKER__EMBEDDED="false")
    )
    gateway.start()
    gateway.workers = {"worker-0": gateway.spawn_worker("worker-0")}  # type: ignore[attr-defined]
    yield gateway
    for worker in gateway.workers.values():  # type: ignore[attr-defined]
        worker.kill()
    gateway.stop()


@pytest.fixture(scope="module")
def client(gw: LiveGateway) -> openai.OpenAI:
    return gw.client(gw.new_org_key("control")[2])


@pytest.fixture(scope="module")
def train_file(client: openai.OpenAI) -> str:
    return upload(client, shared_subset("alpaca_en_demo.json", EPOCH), name="alpaca_en.json")


def test_cancel_stops_training(client: openai.OpenAI, train_file: str) -> None:
    job = client.fine_tuning.jobs.create(model=TINY, training_file=train_file, method=supervised(LONG))
    wait_until(lambda: latest_step(client, job.id) >= 3, what="training to start")
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    time.sleep(3)  # the worker stops the child within a heartbeat
    seen = latest_step(client, job.id)
    time.sleep(3)
    assert latest_step(client, job.id) == seen < EPOCH, "training went on after cancel"
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.cancel(job.id)
    assert err.value.code == "invalid_job_state"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)


def test_pause_then_resume_continues_without_gaps(client: openai.OpenAI, train_file: str) -> None:
    hp = {**LONG, "n_epochs": 2}
    job = client.fine_tuning.jobs.create(model=TINY, training_file=train_file, method=supervised(hp))
    wait_until(lambda: latest_step(client, job.id) >= EPOCH + 20, what="training into epoch 2")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_until(lambda: any(e.message.startswith("Paused at step") for e in all_events(client, job.id)), what="pause")
    paused_at = metric_steps(client, job.id)[-1]
    time.sleep(2)
    assert metric_steps(client, job.id)[-1] == paused_at, "training went on while paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_for(client, job.id, ("succeeded",))
    messages = [e.message for e in all_events(client, job.id)]
    assert f"Resuming from the checkpoint at step {paused_at}" in messages
    assert_every_step_once(client, done)


def test_kill_9_worker_mid_epoch_resumes_from_checkpoint(
    gw: LiveGateway, client: openai.OpenAI, train_file: str
) -> None:
    workers = gw.workers  # type: ignore[attr-defined]
    workers["worker-1"] = gw.spawn_worker("worker-1")  # two workers: the survivor takes the job over
    hp = {**LONG, "n_epochs": 2}
    job = client.fine_tuning.jobs.create(model=TINY, training_file=train_file, method=supervised(hp))
    wait_until(lambda: latest_step(client, job.id) >= EPOCH + 20, what="training into epoch 2")
    runner = next(name for name in workers if f"running job {job.id}" in (gw.data_dir / f"{name}.log").read_text())
    workers[runner].send_signal(signal.SIGKILL)
    workers.pop(runner).wait()
    done = wait_for(client, job.id, ("succeeded",), timeout=300)
    messages = [e.message for e in all_events(client, job.id)]
    assert any(m.startswith("The worker running this job stopped responding") for m in messages)
    first_epoch_end = min(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data)
    assert f"Resuming from the checkpoint at step {first_epoch_end}" in messages
    assert_every_step_once(client, done)


def test_bad_data_fails_the_job_with_documented_codes(client: openai.OpenAI, gw: LiveGateway) -> None:
    few = upload(client, chat_jsonl(qa_pairs(7)))
    job = client.fine_tuning.jobs.create(model=TINY, training_file=few)
    failed = wait_until(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "failed" and j, what="fail")
    assert failed.error.code == "invalid_n_examples" and failed.error.param == "training_file"
    assert failed.error.message == "Training file has 7 example(s), but must have at least 10 examples"
    assert any(e.level == "error" for e in all_events(client, job.id))

    dpo = upload(client, shared_subset("dpo_zh_demo.json", 12), name="dpo.json")
    job = client.fine_tuning.jobs.create(model=TINY, training_file=dpo, method=supervised({}))
    failed = wait_until(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "failed" and j, what="fail")
    assert failed.error.code == "invalid_training_file" and "preference" in failed.error.message

    # a crash inside training (no such LoRA target) fails that job readably; the next job still runs
    ok = upload(client, chat_jsonl(qa_pairs(10)))
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=ok, method=supervised({"n_epochs": 1, "lora_target": ["no_such_proj"]})
    )
    failed = wait_until(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status == "failed" and j, what="fail", timeout=120
    )
    assert failed.error.code == "training_failed" and "no_such_proj" in failed.error.message
    after = client.fine_tuning.jobs.create(model=TINY, training_file=ok, method=supervised({"n_epochs": 1}))
    wait_for(client, after.id, ("succeeded",))


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "nope"}, "model", "model_not_available"),
        ({"training_file": "file-missing"}, "training_file", "invalid_file_id"),
        ({"suffix": "bad:suffix"}, "suffix", "invalid_value"),
        (
            {"method": supervised({"n_epochs": 0})},
            "method.supervised.hyperparameters.n_epochs",
            "invalid_hyperparameter",
        ),
        (
            {"method": supervised({"lora_rank": 1000})},
            "method.supervised.hyperparameters.lora_rank",
            "invalid_hyperparameter",
        ),
        (
            {"method": supervised({"quantization_bit": 4})},
            "method.supervised.hyperparameters.quantization_bit",
            "unsupported_on_device",
        ),
        (
            {"method": supervised({"precision": "fp16"})},
            "method.supervised.hyperparameters.precision",
            "unsupported_on_device",
        ),
        ({"method": supervised({"beta": 0.1})}, "method.supervised.hyperparameters.beta", "invalid_hyperparameter"),
        ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader", "missing_required_parameter"),
        ({"method": {"type": "distillation"}}, "method.type", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
    ],
)
def test_bad_requests_are_400s(
    client: openai.OpenAI, train_file: str, recorder: SpecRecorder, gw: LiveGateway, body: dict, param: str, code: str
) -> None:
    checked = gw.client(client.api_key, recorder)
    before = len(list(checked.fine_tuning.jobs.list(limit=100)))
    with pytest.raises(openai.BadRequestError) as err:
        checked.fine_tuning.jobs.create(**{"model": TINY, "training_file": train_file, **body})
    assert err.value.status_code == 400 and err.value.param == param and err.value.code == code
    assert len(list(checked.fine_tuning.jobs.list(limit=100))) == before


def test_wrong_purpose_and_foreign_job(client: openai.OpenAI, gw: LiveGateway) -> None:
    import io

    other = client.files.create(file=("x.txt", io.BytesIO(b"hello")), purpose="user_data").id
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=TINY, training_file=other)
    assert err.value.code == "invalid_file_purpose"
    job = client.fine_tuning.jobs.list(limit=1).data[0]
    stranger = gw.client(gw.new_org_key("stranger")[2])
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.cancel(job.id)


@pytest.mark.postgres
def test_two_workers_on_postgres_never_share_a_job(tiny_model: str, tmp_path) -> None:  # noqa: ANN001
    url, drop = _fresh_postgres_database()
    gateway = LiveGateway(tmp_path, url, **gateway_env(tiny_model, TUNEGATE_WORKER__EMBEDDED="false"))
    gateway.start()
    workers = [gateway.spawn_worker(f"pg-worker-{i}") for i in range(2)]
    try:
        client = gateway.client(gateway.new_org_key("pg")[2])
        file_id = upload(client, chat_jsonl(qa_pairs(10)))
        ids = [
            client.fine_tuning.jobs.create(
                model=TINY, training_file=file_id, method=supervised({"n_epochs": 1, "batch_size": 5})
            ).id
            for _ in range(4)
        ]
        for job_id in ids:
            wait_for(client, job_id, ("succeeded",))
            started = [e for e in all_events(client, job_id) if e.message == "Fine-tuning job started"]
            assert len(started) == 1
        logs = [(tmp_path / f"pg-worker-{i}.log").read_text() for i in range(2)]
        ran = [{j for j in ids if f"running job {j}" in log} for log in logs]
        assert not ran[0] & ran[1] and ran[0] | ran[1] == set(ids)
    finally:
        for w in workers:
            w.kill()
        gateway.stop()
        drop()
