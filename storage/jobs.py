"""Fine-tuning job rows, their events and checkpoints; the state machine and the worker lease.

Every transition is one conditional UPDATE (``WHERE status IN … [AND lease_owner = me]``): two workers,
a user's cancel and a dying child can race freely, and exactly one of them wins. Claiming a job is the
same: on Postgres ``FOR UPDATE SKIP LOCKED`` picks a candidate no other worker is looking at; on SQLite
the conditional UPDATE alone decides (a single writer at a time).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, exists, func, update
from sqlmodel import Session, col, delete, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.files import Page, keyset_page
from storage.ids import new_id, now
from storage.leases import OrgCap, claim_oldest, fence, held_update, renew
from storage.tables import FineTunedModel, FineTuningJob, JobCheckpoint, JobEvent, StoredFile

ACTIVE = ("validating_files", "queued", "running", "paused")
FINAL = ("succeeded", "failed", "cancelled")
KEEP_CHECKPOINTS = 3
MAX_METADATA = 16  # pairs a job may carry (finetune/submit.py), so no filter with more can match


class JobStore:
    def __init__(self, db: Database, running_cap: int | None = None) -> None:
        self.db = db
        self.cap = OrgCap("running_jobs", running_cap)  # per organization; its override wins

    # --- rows -------------------------------------------------------------------------------------------
    def insert(self, job: FineTuningJob, first_event: str) -> FineTuningJob:
        with self.db.session() as s:
            s.add(job)
            s.add(_event(job.id, first_event))
        return job

    def get(self, org_id: str | None, job_id: str) -> FineTuningJob:
        with self.db.session() as s:
            query = select(FineTuningJob).where(FineTuningJob.id == job_id)
            if org_id is not None:
                query = query.where(FineTuningJob.organization_id == org_id)
            job = s.exec(query).first()
        if job is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found")
        return job

    def list(self, org_id: str, *, limit: int, after: str | None, metadata: dict[str, str]) -> Page[FineTuningJob]:
        """A page of the organization's jobs, newest first, whose metadata holds every ``metadata`` pair (in SQL)."""
        if len(metadata) > MAX_METADATA:
            raise InvalidRequest(f"Filter on at most {MAX_METADATA} metadata pairs.", param="metadata")
        mine = FineTuningJob.organization_id == org_id
        where = [mine, *(metadata_is(self.db.dialect, col(FineTuningJob.metadata_), k, v) for k, v in metadata.items())]

        def missing(after: str) -> NotFound:
            return NotFound(f"No such fine-tuning job: {after}", param="after", code="job_not_found")

        with self.db.session() as s:
            return keyset_page(
                s, FineTuningJob, where, limit=limit, after=after, ascending=False, missing=missing, anchor_where=[mine]
            )

    # --- user actions -----------------------------------------------------------------------------------
    def cancel(self, org_id: str, job_id: str) -> FineTuningJob:
        return self._user_transition(org_id, job_id, ACTIVE, "cancelled", status="cancelled", finished_at=now())

    def pause(self, org_id: str, job_id: str) -> FineTuningJob:
        """Queued jobs pause at once; a running one is told to checkpoint and stop (its child sees the status)."""
        return self._user_transition(
            org_id, job_id, ("validating_files", "queued", "running"), "paused", status="paused"
        )

    def resume(self, org_id: str, job_id: str) -> FineTuningJob:
        return self._user_transition(org_id, job_id, ("paused",), "resumed", status="queued")

    def _user_transition(
        self, org_id: str, job_id: str, from_: tuple[str, ...], done: str, **values: Any
    ) -> FineTuningJob:
        """One conditional UPDATE on the caller's job; a job in another state is a 400 naming that state."""
        self.get(org_id, job_id)  # 404 for a missing or foreign job
        with self.db.session() as s:
            result = s.exec(
                update(FineTuningJob)
                .where(col(FineTuningJob.id) == job_id, col(FineTuningJob.status).in_(from_))
                .values(**values)
            )
            moved = result.rowcount == 1
            if moved:
                s.add(_event(job_id, f"Fine-tuning job {done}"))
        job = self.get(org_id, job_id)
        if not moved:
            raise InvalidRequest(
                f"Job {job.id} is {job.status} and cannot be {done}.",
                param="fine_tuning_job_id",
                code="invalid_job_state",
            )
        return job

    # --- worker side ------------------------------------------------------------------------------------
    def claim(self, worker: str, lease_s: float) -> FineTuningJob | None:
        """Take one job that needs a worker: validating or queued, or running with an expired lease. ``worker`` is
        this claim's lease token (``storage.leases.claim_token``)."""
        t = time.time()
        claimable = col(FineTuningJob.status).in_(("validating_files", "queued", "running"))
        # attempts counts take-overs of a *running* job (its worker or training process died), not pause/resume
        interrupted = case((col(FineTuningJob.status) == "running", 1), else_=0)
        job_id = claim_oldest(
            self.db,
            FineTuningJob,
            claimable,
            t,
            self.cap,
            lease_owner=worker,
            lease_expires_at=t + lease_s,
            attempts=FineTuningJob.attempts + interrupted,
        )
        return self.get(None, job_id) if job_id else None

    def heartbeat(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when it is no longer ours (another worker took the job)."""
        return renew(self.db, FineTuningJob, job_id, worker, lease_s)

    def release(self, job_id: str, worker: str) -> None:
        with self.db.session() as s:
            held_update(s, FineTuningJob, job_id, worker, lease_owner=None, lease_expires_at=None)

    def advance(self, job_id: str, worker: str, from_: tuple[str, ...], **values: Any) -> bool:
        """A worker's transition: only while it holds the lease and the job is in one of ``from_``."""
        with self.db.session() as s:
            return held_update(s, FineTuningJob, job_id, worker, col(FineTuningJob.status).in_(from_), **values)

    def fail(self, job_id: str, worker: str | None, code: str, message: str, param: str | None = None) -> bool:
        with self.db.session() as s:
            failed = held_update(
                s,
                FineTuningJob,
                job_id,
                worker,
                col(FineTuningJob.status).in_(("validating_files", "queued", "running")),
                status="failed",
                finished_at=now(),
                error={"code": code, "message": message, "param": param},
                lease_owner=None,
                lease_expires_at=None,
            )
            if failed:
                s.add(_event(job_id, message, level="error"))
        return failed

    # --- events -----------------------------------------------------------------------------------------
    def add_event(
        self,
        job_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",  # noqa: A002
        data: dict | None = None,
        step: int | None = None,
        lease: str | None = None,
    ) -> None:
        """``lease``: the writer's claim token — the event is written only while that claim holds the job."""
        with self.db.session() as s:
            if lease is not None:
                fence(s, FineTuningJob, job_id, lease)
            s.add(_event(job_id, message, level=level, type=type, data=data, step=step))

    def last_message(self, job_id: str, prefix: str) -> str | None:
        """The newest event message of the job that starts with ``prefix``."""
        with self.db.session() as s:
            return s.exec(
                select(JobEvent.message)
                .where(JobEvent.job_id == job_id, col(JobEvent.message).startswith(prefix))
                .order_by(col(JobEvent.seq).desc())
            ).first()

    def events(self, org_id: str, job_id: str, *, limit: int, after: str | None) -> Page[JobEvent]:
        self.get(org_id, job_id)
        return self._page(JobEvent, job_id, limit, after, "after")

    def metrics(self, job_id: str) -> builtins.list[JobEvent]:
        with self.db.session() as s:
            return list(
                s.exec(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                    .order_by(col(JobEvent.seq))
                ).all()
            )

    def add_final_metrics(self, job_id: str, values: dict, message: str, lease: str | None = None) -> None:
        """Merge ``values`` into the job's last metrics event and its newest checkpoint's metrics."""
        with self.db.session() as s:
            if lease is not None:
                fence(s, FineTuningJob, job_id, lease)
            event = s.exec(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                .order_by(col(JobEvent.seq).desc())
            ).first()
            if event is not None:
                event.data = {**(event.data or {}), **values}
                event.message = f"{event.message}; {message}"
                s.add(event)
            checkpoint = s.exec(
                select(JobCheckpoint)
                .where(JobCheckpoint.job_id == job_id)
                .order_by(col(JobCheckpoint.step_number).desc())
            ).first()
            if checkpoint is not None:
                checkpoint.metrics = {**(checkpoint.metrics or {}), **values}
                s.add(checkpoint)

    def last_metrics_step(self, job_id: str) -> int:
        """The newest step whose metrics were recorded (0: none) — written only under the job's lease."""
        with self.db.session() as s:
            found = s.exec(
                select(func.max(JobEvent.step)).where(col(JobEvent.job_id) == job_id, col(JobEvent.type) == "metrics")
            ).first()
            return int(found or 0)

    def forget_steps_after(self, job_id: str, step: int, lease: str | None = None) -> int:
        """Resuming from step N discards the metrics of steps after N (they will be trained again)."""
        with self.db.session() as s:
            if lease is not None:
                fence(s, FineTuningJob, job_id, lease)
            result = s.exec(
                delete(JobEvent).where(
                    col(JobEvent.job_id) == job_id, col(JobEvent.type) == "metrics", col(JobEvent.step) > step
                )
            )
            return result.rowcount

    # --- checkpoints ------------------------------------------------------------------------------------
    def add_checkpoint(
        self,
        job: FineTuningJob,
        step: int,
        metrics: dict,
        model_id: str,
        base_model: str,
        adapter_key: str,
        lease: str | None = None,
    ) -> builtins.list[FineTunedModel]:
        """Record a checkpoint (and its servable model); returns the models pruned beyond the last 3. A step
        recorded before (a resumed job saving it again) is replaced, never doubled."""
        with self.db.session() as s:
            if lease is not None:
                fence(s, FineTuningJob, job.id, lease)
            for again in s.exec(
                select(JobCheckpoint).where(JobCheckpoint.job_id == job.id, JobCheckpoint.step_number == step)
            ).all():
                s.delete(again)
            replaced = _model(s, model_id)
            if replaced is not None:
                s.delete(replaced)
            s.flush()
            s.add(
                JobCheckpoint(
                    id=new_id("ftckpt_"),
                    job_id=job.id,
                    organization_id=job.organization_id,
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=model_id,
                    created_at=now(),
                )
            )
            s.add(
                FineTunedModel(
                    id=model_id,
                    organization_id=job.organization_id,
                    base_model=base_model,
                    kind="checkpoint",
                    job_id=job.id,
                    adapter_key=adapter_key,
                    created_at=now(),
                )
            )
            s.flush()
            old = s.exec(
                select(JobCheckpoint)
                .where(JobCheckpoint.job_id == job.id)
                .order_by(col(JobCheckpoint.step_number).desc())
                .offset(KEEP_CHECKPOINTS)
            ).all()
            pruned = [replaced] if replaced is not None and replaced.adapter_key != adapter_key else []
            for ckpt in old:
                model = s.exec(
                    select(FineTunedModel).where(FineTunedModel.id == ckpt.fine_tuned_model_checkpoint)
                ).first()
                if model is not None:
                    pruned.append(model)
                    s.delete(model)
                s.delete(ckpt)
        return pruned

    def checkpoints(self, org_id: str, job_id: str, *, limit: int, after: str | None) -> Page[JobCheckpoint]:
        self.get(org_id, job_id)
        return self._page(JobCheckpoint, job_id, limit, after, "after")

    def add_model(self, model: FineTunedModel) -> None:
        with self.db.session() as s:
            s.add(model)

    def succeed(
        self,
        job_id: str,
        lease: str,
        model: FineTunedModel,
        results: StoredFile,
        more_results: Sequence[StoredFile] = (),
        **values: Any,
    ) -> bool:
        """The end of a job, once: the fine-tuned model row and the ``succeeded`` status (with ``values``) commit in
        one transaction fenced by the lease. A repeat (a worker that died after the commit and a successor that
        trains nothing new) or a lost lease is a no-op, never a second model or a failed job. ``results`` (the
        results CSV, blobs already stored) and ``more_results`` (TensorBoard, W&B archives) become visible in the
        same commit."""
        with self.db.session() as s:
            fence(s, FineTuningJob, job_id, lease)
            result = s.exec(
                update(FineTuningJob)
                .where(
                    col(FineTuningJob.id) == job_id,
                    col(FineTuningJob.lease_owner) == lease,
                    col(FineTuningJob.status) == "running",
                )
                .values(
                    status="succeeded",
                    fine_tuned_model=model.id,
                    result_files=[results.id, *(f.id for f in more_results)],
                    **values,
                )
            )
            if result.rowcount != 1:
                s.rollback()
                return False
            if _model(s, model.id) is None:
                s.add(model)
            s.add(results)
            s.add_all(more_results)
            s.add(_event(job_id, f"New fine-tuned model created: {model.id}"))
            s.add(_event(job_id, "The job has successfully completed"))
        return True

    def _page(
        self, table: type[JobEvent] | type[JobCheckpoint], job_id: str, limit: int, after: str | None, param: str
    ) -> Page:
        def missing(after: str) -> NotFound:
            return NotFound(f"No such object in this job: {after}", param=param)

        with self.db.session() as s:
            return keyset_page(
                s, table, [table.job_id == job_id], limit=limit, after=after, ascending=False, missing=missing
            )


def metadata_is(dialect: str, column: Any, key: str, value: str) -> Any:
    """SQL for ``column[key] == value`` (a JSON metadata column). SQLite's JSON paths cannot spell every key (quotes,
    backslashes, non-ASCII), so there the pairs are looked up through ``json_each``; Postgres' ``->>`` takes any key."""
    if dialect != "sqlite":
        return column[key].as_string() == value
    pairs = func.json_each(column).table_valued("key", "value")
    return exists(select(1).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value))


def _event(
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",  # noqa: A002
    data: dict | None = None,
    step: int | None = None,
) -> JobEvent:
    return JobEvent(
        id=new_id("ftevent-"),
        job_id=job_id,
        created_at=now(),
        level=level,
        message=message,
        type=type,
        data=data,
        step=step,
    )


def _model(s: Session, model_id: str) -> FineTunedModel | None:
    return s.exec(select(FineTunedModel).where(FineTunedModel.id == model_id)).first()


def owned_model(s: Session, org_id: str, model_id: str) -> FineTunedModel | None:
    """The organization's fine-tuned model or checkpoint ``model_id`` (None for another organization's)."""
    return s.exec(
        select(FineTunedModel).where(FineTunedModel.id == model_id, FineTunedModel.organization_id == org_id)
    ).first()
