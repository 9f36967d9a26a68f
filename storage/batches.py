"""Batches and their per-line results. Every read filters on the organization; batches are claimed under a lease.

A line's result is stored at most once: ``(batch_id, line)`` is unique and results are written only while the
claim's token holds the batch's lease (``storage.leases.fence``), together with the batch's counters and the
organization's usage rows, in one transaction. A worker that dies mid-batch loses only the results it had not
committed; its successor reads the done set (``done_lines``) and sends the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, update
from sqlmodel import Session, col, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.files import Page, keyset_page
from storage.ids import now
from storage.leases import OrgCap, claim_oldest, fence, held_update, renew
from storage.tables import Batch, BatchLine, UsageRecord
from storage.usage import fit

# a worker holds these; the others are final
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
FINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class Chunk:
    """Results committed together: the lines, what they add to the counters, the usage rows they cost."""

    lines: list[BatchLine] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usage: list[UsageRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines)


class BatchStore:
    def __init__(self, db: Database, running_cap: int | None = None) -> None:
        self.db = db
        self.cap = OrgCap("running_batches", running_cap)  # per organization; its override wins

    # --- the API's side ----------------------------------------------------------------------------------
    def add(self, row: Batch) -> Batch:
        with self.db.session() as s:
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def get(self, org_id: str | None, batch_id: str) -> Batch:
        with self.db.session() as s:
            query = select(Batch).where(Batch.id == batch_id)
            if org_id is not None:
                query = query.where(Batch.organization_id == org_id)
            row = s.exec(query).first()
        if row is None:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
        return row

    def list(self, org_id: str, *, limit: int, after: str | None) -> Page[Batch]:
        """Newest first, keyset-paged on ``seq`` after the batch ``after``."""
        with self.db.session() as s:
            return keyset_page(
                s,
                Batch,
                [Batch.organization_id == org_id],
                limit=limit,
                after=after,
                ascending=False,
                missing=lambda after: NotFound(f"No batch found with id '{after}'.", param="after"),
            )

    def cancel(self, org_id: str, batch_id: str) -> Batch:
        """validating | in_progress → cancelling (the worker that holds it, or the next to claim it, writes the
        partial output and ends it cancelled); cancelling again is a no-op; a finished batch is a 400."""
        with self.db.session() as s:
            changed = held_update(
                s,
                Batch,
                batch_id,
                None,
                Batch.organization_id == org_id,
                col(Batch.status).in_(("validating", "in_progress")),
                status="cancelling",
                cancelling_at=now(),
            )
        row = self.get(org_id, batch_id)
        if not changed and row.status not in ("cancelling", "cancelled"):
            raise InvalidRequest(
                f"Batch {batch_id} is {row.status} and can no longer be cancelled.",
                param="batch_id",
                code="invalid_batch_state",
            )
        return row

    # --- the worker's side -------------------------------------------------------------------------------
    def claim(self, lease: str, lease_s: float, not_of: str | None = None) -> Batch | None:
        """An active batch nobody holds (new, given back after its time slice, or its worker stopped renewing the
        lease), in the fair order, below its organization's cap; ``not_of``: another organization's only."""
        t = time.time()
        claimable: ColumnElement[bool] = col(Batch.status).in_(ACTIVE)
        if not_of is not None:
            claimable = and_(claimable, col(Batch.organization_id) != not_of)
        batch_id = claim_oldest(self.db, Batch, claimable, t, self.cap, lease_owner=lease, lease_expires_at=t + lease_s)
        return self.get(None, batch_id) if batch_id else None

    def others_waiting(self, org_id: str) -> bool:
        """Whether another organization has an active batch that no worker holds."""
        t = time.time()
        with self.db.session() as s:
            return (
                s.exec(
                    select(Batch.id)
                    .where(
                        col(Batch.status).in_(ACTIVE),
                        Batch.organization_id != org_id,
                        or_(col(Batch.lease_owner).is_(None), col(Batch.lease_expires_at) < t),
                    )
                    .limit(1)
                ).first()
                is not None
            )

    def heartbeat(self, batch_id: str, lease: str, lease_s: float) -> str | None:
        """Extend the lease; the batch's status, or None when the lease is no longer held under ``lease``."""
        if not renew(self.db, Batch, batch_id, lease, lease_s, col(Batch.status).in_(ACTIVE)):
            return None
        with self.db.session() as s:
            return s.exec(select(Batch.status).where(Batch.id == batch_id)).first()

    def release(self, batch_id: str, lease: str) -> None:
        """Give the lease back without finishing (the worker stops): the next claim goes on at once."""
        with self.db.session() as s:
            held_update(s, Batch, batch_id, lease, lease_owner=None, lease_expires_at=None)

    def advance(self, batch_id: str, lease: str, *, from_: tuple[str, ...], **values: Any) -> bool:
        """A fenced status change (or any column) while the batch is in one of ``from_``; False if it was not."""
        with self.db.session() as s:
            return held_update(s, Batch, batch_id, lease, col(Batch.status).in_(from_), **values)

    def commit(self, batch: Batch, lease: str, chunk: Chunk) -> str:
        """Store ``chunk`` (fenced: LeaseLost once another claim holds the batch) and add it to the counters; the
        batch's status now (a cancel or another change is seen by the next commit)."""
        with self.db.session() as s:
            fence(s, Batch, batch.id, lease)
            s.add_all(chunk.lines)
            s.add_all([fit(u) for u in chunk.usage])
            s.exec(
                update(Batch)
                .where(col(Batch.id) == batch.id)
                .values(
                    completed=Batch.completed + chunk.completed,
                    failed=Batch.failed + chunk.failed,
                    input_tokens=Batch.input_tokens + chunk.input_tokens,
                    output_tokens=Batch.output_tokens + chunk.output_tokens,
                )
            )
            return s.exec(select(Batch.status).where(Batch.id == batch.id)).one()

    def done_lines(self, batch_id: str) -> set[int]:
        """The input lines that have a stored result (one light column)."""
        with self.db.session() as s:
            return set(s.exec(select(BatchLine.line).where(BatchLine.batch_id == batch_id)).all())

    def results(self, batch_id: str, ok: bool, page: int = 500) -> Iterator[str]:
        """The stored results of one kind, in input order, read a page at a time (never all at once)."""
        last = 0
        while True:
            with self.db.session() as s:
                rows = s.exec(
                    select(BatchLine.line, BatchLine.result)
                    .where(BatchLine.batch_id == batch_id, BatchLine.ok == ok, BatchLine.line > last)
                    .order_by(col(BatchLine.line))
                    .limit(page)
                ).all()
            if not rows:
                return
            for _, result in rows:
                yield result
            last = rows[-1][0]

    def finish(self, s: Session, batch_id: str, lease: str, **values: Any) -> None:
        """In the transaction that stores the output files: end the batch (fenced) and drop its lease."""
        fence(s, Batch, batch_id, lease)
        s.exec(update(Batch).where(col(Batch.id) == batch_id).values(lease_owner=None, lease_expires_at=None, **values))
