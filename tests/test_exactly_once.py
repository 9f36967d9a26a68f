"""Exactly once, whatever dies when: real worker processes, kill -9 at each phase of a job, a frozen worker whose
lease lapses, a child that segfaults every time, a database restart in the middle of training.

Faults are injected where they are hard to time from outside: ``worker.fault_phase`` makes the job's child kill
its worker with SIGKILL (and die with it) at an exact phase; the test then starts a fresh worker.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import create_engine, text

from tests.finetune_support import (
    TINY,
    all_events,
    chat_jsonl,
    gateway_env,
    latest_step,
    qa_pairs,
    results_csv,
    shared_subset,
    upload,
    wait_for,
    wait_until,
    worker,
)
from tests.pg_support import private_cluster
from tests.support import LiveGateway

SHORT = {"n_epochs": 2, "batch_size": 4, "learning_rate": 0.001}  # 20 examples: 10 steps, a checkpoint per epoch
LONG = {"n_epochs": 2, "batch_size": 1, "learning_rate": 0.001, "cutoff_len": 256}  # 300 examples: 600 steps


def supervised(hp: dict) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def model_rows(database_url: str, job_id: str) -> list[tuple[str, str]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(text("SELECT id, kind FROM models WHERE job_id = :j ORDER BY id"), {"j": job_id})
            ]
    finally:
        engine.dispose()


def assert_done_once(client: openai.OpenAI, database_url: str, job_id: str) -> None:
    """Succeeded once, one fine-tuned model row, every step exactly once in events and results, in order."""
    job = wait_for(client, job_id, ("succeeded",), timeout=480)  # a 2-core box under load: ~2 steps/s
    events = all_events(client, job_id)
    messages = [e.message for e in events]
    assert messages.count("The job has successfully completed") == 1, messages
    assert sum(m.startswith("New fine-tuned model created") for m in messages) == 1, messages
    rows = model_rows(database_url, job_id)
    assert [r for r in rows if r[1] == "fine-tuned"] == [(job.fine_tuned_model, "fine-tuned")], rows
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    total = next(e.data["total_steps"] for e in events if e.type == "metrics")
    assert steps == list(range(1, total + 1)), f"metrics steps repeated, lost or out of order: {steps}"
    assert [int(r["step"]) for r in results_csv(client, job)] == list(range(1, total + 1))
    names = [client.files.retrieve(f).filename for f in job.result_files]
    assert names == ["step_metrics.csv", "tensorboard.tar.gz"], names  # one of each, however often it resumed
    checkpoint_steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)]
    assert len(checkpoint_steps) == len(set(checkpoint_steps)), checkpoint_steps


@pytest.fixture(scope="module")
def gw(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """Postgres (a fresh database), no embedded worker: the tests start and kill `tunegate worker` processes."""
    from tests.conftest import _fresh_postgres_database

    url, drop = _fresh_postgres_database()
    data_dir = tmp_path_factory.mktemp("once")
    gateway = LiveGateway(data_dir, url, **gateway_env(tiny_model, TUNEGATE_WORKER__EMBEDDED="false"))
    gateway.start()
    yield gateway
    gateway.stop()
    drop()


@pytest.fixture(scope="module")
def client(gw: LiveGateway) -> openai.OpenAI:
    return gw.client(gw.new_org_key("once")[2])


@pytest.fixture(scope="module")
def small_file(client: openai.OpenAI) -> str:
    return upload(client, chat_jsonl(qa_pairs(20)))


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["training", "checkpoint", "evaluating", "results", "registering", "succeeded"])
def test_kill_9_of_the_worker_at_each_phase(
    gw: LiveGateway, client: openai.OpenAI, small_file: str, phase: str
) -> None:
    # a validation file makes the job reach its end-of-job evaluation (no engine here: it is skipped with a warning)
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=small_file, validation_file=small_file, method=supervised(SHORT)
    )
    doomed = worker(gw, f"doomed-{phase}", TUNEGATE_WORKER__FAULT_PHASE=phase, TUNEGATE_WORKER__FAULT_JOB=job.id)
    try:
        assert doomed.wait(timeout=180) == -signal.SIGKILL, f"the worker was not killed at {phase}"
    finally:
        doomed.kill()
    survivor = worker(gw, f"survivor-{phase}")
    try:
        assert_done_once(client, gw.database_url, job.id)
    finally:
        survivor.kill()
        survivor.wait()


@pytest.mark.slow
def test_a_frozen_worker_whose_lease_lapses_writes_nothing_more(gw: LiveGateway, client: openai.OpenAI) -> None:
    train = upload(client, shared_subset("alpaca_en_demo.json", 300), name="alpaca_en.json")
    # one epoch (300 steps): enough for the child to train on past the 4 s lease and the successor to take over
    job = client.fine_tuning.jobs.create(model=TINY, training_file=train, method=supervised({**LONG, "n_epochs": 1}))
    frozen = worker(gw, "frozen")
    successor = None
    try:
        wait_until(lambda: latest_step(client, job.id) >= 5, timeout=120, what="training to start")
        frozen.send_signal(signal.SIGSTOP)  # its child trains on, unaware, until the lease (4 s) lapses
        successor = worker(gw, "successor")
        wait_until(
            lambda: any("stopped responding" in e.message for e in all_events(client, job.id)),
            timeout=60,
            what="the successor to take the job over",
        )
        wait_until(lambda: latest_step(client, job.id) >= 20, timeout=120, what="the successor to train")
        frozen.send_signal(signal.SIGCONT)  # it finds its lease gone and stops its (already stopped) child
        assert_done_once(client, gw.database_url, job.id)
        assert frozen.poll() is None, "the thawed worker must keep running"
    finally:
        for proc in (frozen, successor):
            if proc is not None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_a_child_that_segfaults_every_time_fails_after_max_attempts(
    gw: LiveGateway, client: openai.OpenAI, small_file: str
) -> None:
    crashing = client.fine_tuning.jobs.create(model=TINY, training_file=small_file, method=supervised(SHORT))
    env = {
        "TUNEGATE_WORKER__FAULT_PHASE": "segfault",
        "TUNEGATE_WORKER__FAULT_JOB": crashing.id,
        "TUNEGATE_WORKER__MAX_ATTEMPTS": "2",
    }
    workers = [worker(gw, f"segv-{i}", **env) for i in range(2)]
    try:
        healthy = client.fine_tuning.jobs.create(model=TINY, training_file=small_file, method=supervised(SHORT))
        failed = wait_until(
            lambda: (j := client.fine_tuning.jobs.retrieve(crashing.id)).status == "failed" and j,
            timeout=240,
            what="the crashing job to fail",
        )
        assert failed.error.code == "training_process_died"
        assert "SIGSEGV" in failed.error.message and "2 times" in failed.error.message, failed.error.message
        crashes = [
            e
            for e in all_events(client, crashing.id)
            if e.message.startswith("The training process was killed by SIGSEGV")
        ]
        assert len(crashes) == 2, [e.message for e in crashes]
        assert_done_once(client, gw.database_url, healthy.id)  # the other job ran meanwhile, on the same workers
        assert all(w.poll() is None for w in workers), "a crashing job must not take its worker down"
    finally:
        for w in workers:
            w.kill()
            w.wait()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_database_restart_during_training_and_an_eval_run_costs_a_pause(tiny_model: str, tmp_path: Path) -> None:
    with private_cluster() as cluster:
        gateway = LiveGateway(
            tmp_path / "gw",
            cluster.url,
            **gateway_env(tiny_model, TUNEGATE_WORKER__EMBEDDED="false", TUNEGATE_WORKER__LEASE_SECONDS="15"),
        )
        gateway.start()
        proc = None
        try:
            cl = gateway.client(gateway.new_org_key("restart")[2])
            train = upload(cl, shared_subset("alpaca_en_demo.json", 300), name="alpaca_en.json")
            job = cl.fine_tuning.jobs.create(
                model=TINY, training_file=train, method=supervised({**LONG, "n_epochs": 1})
            )
            eval_id, run_id = _slow_eval_run(cl, 160)  # ~32 s of grading: under way when the database goes
            proc = gateway.spawn_worker("pg-restart")
            wait_until(lambda: latest_step(cl, job.id) >= 5, timeout=120, what="training to start")
            cluster.stop()
            time.sleep(4)  # the child's writes and the workers' renewals fail meanwhile, and are retried
            cluster.start()
            assert_done_once(cl, cluster.url, job.id)
            _assert_run_once(cl, eval_id, run_id, 160)
            messages = [e.message for e in all_events(cl, job.id)]
            assert not any("stopped responding" in m for m in messages), "a short outage must not restart the run"
            assert proc.poll() is None
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            gateway.stop()


SLOW_GRADER = (
    "import time\ndef grade(sample, item):\n    time.sleep(0.2)\n"
    "    return 1.0 if sample['output_text'] == item['want'] else 0.0\n"
)


def _slow_eval_run(client: openai.OpenAI, n: int) -> tuple[str, str]:
    """A jsonl run (samples given: no engine) whose batches of 32 take ~6 s, longer than the 4 s lease."""
    evaluation = client.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{"type": "python", "name": "slow", "source": SLOW_GRADER}],
    )
    rows = [{"item": {"want": str(i)}, "sample": {"output_text": str(i if i % 3 else -1)}} for i in range(n)]
    run = client.evals.runs.create(
        evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}}
    )
    return evaluation.id, run.id


def _assert_run_once(client: openai.OpenAI, eval_id: str, run_id: str, n: int) -> None:
    def finished():  # noqa: ANN202
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        return run if run.status in ("completed", "failed", "canceled") else None

    run = wait_until(finished, timeout=300, what="the eval run to finish")
    assert run.status == "completed", run.error
    assert run.result_counts.total == n and run.result_counts.passed == n - len(range(0, n, 3))
    ids = [i.datasource_item_id for i in client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100)]
    assert sorted(ids) == list(range(n)), "items lost or stored twice"


@pytest.mark.slow
def test_two_workers_and_batches_longer_than_the_lease_grade_every_item_once(
    gw: LiveGateway, client: openai.OpenAI
) -> None:
    eval_id, run_id = _slow_eval_run(client, 80)
    workers = [worker(gw, f"evals-{i}") for i in range(2)]
    try:
        _assert_run_once(client, eval_id, run_id, 80)
    finally:
        for w in workers:
            w.kill()
            w.wait()


def test_fault_settings_are_typed() -> None:
    from pydantic import ValidationError

    from storage.settings import WorkerSettings

    assert WorkerSettings(fault_phase="registering").fault_phase == "registering"
    with pytest.raises(ValidationError):
        WorkerSettings(fault_phase="nonsense")
    with pytest.raises(ValidationError):
        WorkerSettings(max_attempts=0)
    assert json.loads(WorkerSettings().model_dump_json())["max_attempts"] == 3
