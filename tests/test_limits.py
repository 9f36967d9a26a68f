"""Limits: fair claiming across organizations and per-organization caps (storage, SQLite and Postgres); rate limits
with OpenAI's headers through the real client, in-process and shared through a real Redis by two gateways and
across a restart; the storage quota."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from storage import migrate
from storage.accounts import Accounts
from storage.db import Database
from storage.evals import EvalStore
from storage.exports import ExportStore
from storage.ids import new_id, now
from storage.jobs import JobStore
from storage.tables import Export, FineTuningJob

# --- fair share and caps, at the storage level -------------------------------------------------------------------


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def _jobs(jobs: JobStore, org_id: str, n: int) -> list[str]:
    ids = [new_id("ftjob-") for _ in range(n)]
    for job_id in ids:
        jobs.insert(FineTuningJob(id=job_id, organization_id=org_id, model="m", training_file="file-x", seed=1,
                                  status="queued", created_at=now()), "queued")
    return ids


def test_a_small_organization_is_not_starved_by_a_big_queue(db: Database) -> None:
    accounts, jobs = Accounts(db), JobStore(db)
    org_a, org_b = accounts.create_org("a").id, accounts.create_org("b").id
    a_jobs = _jobs(jobs, org_a, 20)
    (b_job,) = _jobs(jobs, org_b, 1)  # queued after all of A's
    first = jobs.claim("w1", 60)
    assert first is not None and first.id == a_jobs[0]  # oldest first while nobody runs anything
    second = jobs.claim("w2", 60)
    assert second is not None and second.id == b_job, "B's one job must start before A's 19 others"
    third = jobs.claim("w3", 60)
    assert third is not None and third.id == a_jobs[1]


def test_per_organization_cap_on_running_jobs_default_and_override(db: Database) -> None:
    accounts = Accounts(db)
    jobs = JobStore(db, running_cap=2)  # the settings default
    org_a, org_b = accounts.create_org("a").id, accounts.create_org("b").id
    accounts.set_limit_overrides(org_b, {"running_jobs": 1})
    _jobs(jobs, org_a, 5)
    _jobs(jobs, org_b, 5)
    claimed = [jobs.claim(f"w{i}", 60) for i in range(6)]
    per_org = [j.organization_id for j in claimed if j is not None]
    assert sorted(per_org) == sorted([org_a, org_a, org_b]), per_org
    assert claimed[3:] == [None, None, None]
    running = next(j for j in claimed if j is not None and j.organization_id == org_b)
    jobs.release(running.id, running.lease_owner)  # its worker lets go: B may run one again
    again = jobs.claim("w9", 60)
    assert again is not None and again.organization_id == org_b


def test_a_lapsed_lease_frees_its_slot_under_the_cap(db: Database) -> None:
    accounts, exports = Accounts(db), ExportStore(db, running_cap=1)
    org = accounts.create_org("a").id
    for _ in range(2):
        exports.add(Export(id=new_id("export-"), organization_id=org, model="m", format="gguf", created_at=now()))
    first = exports.claim("w1", 0.5)
    assert first is not None and exports.claim("w2", 60) is None  # at its cap of 1
    time.sleep(0.6)  # the first worker died: its lease lapses, and the export is taken over (not a second one)
    taken = exports.claim("w2", 60)
    assert taken is not None and taken.id == first.id


def test_eval_runs_share_the_same_fair_claim(db: Database) -> None:
    from storage.tables import Eval, EvalRun

    accounts, evals = Accounts(db), EvalStore(db)
    org_a, org_b = accounts.create_org("a").id, accounts.create_org("b").id
    for org in (org_a, org_a, org_a, org_b):
        eval_id = new_id("eval_")
        evals.add(Eval(id=eval_id, organization_id=org, created_at=now()))
        evals.add(EvalRun(id=new_id("evalrun_"), eval_id=eval_id, organization_id=org, model="m", created_at=now()))
    order = [evals.claim(f"w{i}", 60).organization_id for i in range(3)]  # type: ignore[union-attr]
    assert order == [org_a, org_b, org_a]
