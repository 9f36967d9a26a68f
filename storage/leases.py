"""Claiming work under a lease, fairly across organizations: the one claim of jobs, eval runs and exports.

An item is *running* while its lease is held (``lease_owner`` set, ``lease_expires_at`` not past); it is *free* when
nobody holds its lease or the lease lapsed. A claim takes, among the organizations with free claimable items and
below their cap on running items, the one with the fewest running, then the longest waiting (its oldest item first
in line) — so one organization's 50 queued jobs do not starve another's one — and claims that organization's
oldest item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from storage.accounts import limit_overrides
from storage.db import Database


@dataclass(frozen=True)
class OrgCap:
    """A cap on one organization's running items: the ``LimitSettings`` field that names it, and its default."""

    field: str
    default: int | None = None

    def of(self, overrides: dict[str, int]) -> int | None:
        return overrides.get(self.field, self.default)


def claim_oldest(
    db: Database, table: Any, claimable: ColumnElement[bool], now: float, cap: OrgCap | None = None, **values: Any
) -> str | None:
    """Set ``values`` on the next claimable free row (fair order, module docstring); its id, or None.

    The cap holds under concurrent workers: the claiming UPDATE re-counts the organization's running rows in its
    WHERE (SQLite runs it under its single write lock); Postgres first takes a transaction-scoped advisory lock per
    (table, organization), and ``FOR UPDATE SKIP LOCKED`` lets workers pass each other's candidate rows.
    """
    free = or_(col(table.lease_owner).is_(None), col(table.lease_expires_at) < now)
    with db.session() as s:
        for org_id, cap_value in _fair_order(s, table, and_(claimable, free), now, cap):
            if db.dialect == "postgresql":
                s.execute(sa_select(func.pg_advisory_xact_lock(func.hashtext(f"{table.__tablename__}:{org_id}"))))
            query = (
                select(table).where(table.organization_id == org_id, claimable, free).order_by(col(table.seq)).limit(1)
            )
            if db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            row = s.exec(query).first()
            if row is None:
                continue
            where = [table.id == row.id, table.status == row.status, claimable, free]
            if cap_value is not None:
                where.append(_running_count(table, org_id, now) < cap_value)
            result = s.exec(update(table).where(*where).values(**values))
            if result.rowcount == 1:
                return row.id
        return None


def _held(columns: Any, now: float) -> ColumnElement[bool]:
    return and_(columns.lease_owner.is_not(None), columns.lease_expires_at >= now)


def _running_count(table: Any, org_id: str, now: float) -> Any:
    other = table.__table__.alias("other")
    return (
        sa_select(func.count())
        .select_from(other)
        .where(other.c.organization_id == org_id, _held(other.c, now))
        .scalar_subquery()
    )


def _fair_order(
    s: Session, table: Any, waiting: ColumnElement[bool], now: float, cap: OrgCap | None
) -> list[tuple[str, int | None]]:
    """Organizations with waiting items, below their cap: fewest running first, then oldest waiting; with the cap."""
    firsts = dict(
        s.exec(select(table.organization_id, func.min(table.seq)).where(waiting).group_by(table.organization_id)).all()
    )
    if not firsts:
        return []
    running = dict(
        s.exec(
            select(table.organization_id, func.count())
            .where(col(table.organization_id).in_(firsts), _held(table, now))
            .group_by(table.organization_id)
        ).all()
    )
    overrides = limit_overrides(s, list(firsts)) if cap is not None else {}
    order = []
    for org_id in sorted(firsts, key=lambda o: (running.get(o, 0), firsts[o])):
        cap_value = cap.of(overrides.get(org_id, {})) if cap is not None else None
        if cap_value is None or running.get(org_id, 0) < cap_value:
            order.append((org_id, cap_value))
    return order


# --- fencing ---------------------------------------------------------------------------------------------------
# Each claim writes a fresh ``lease_owner`` token (the worker's id + a nonce, ``claim_token``): the token is the
# fencing token. A child whose lease was taken over keeps its old token, so every durable write it makes under
# ``fence`` fails with LeaseLost instead of landing beside the new owner's.


class LeaseLost(Exception):
    """The item's lease is held under another token now: stop, write nothing more."""


def claim_token(worker_id: str) -> str:
    """The ``lease_owner`` one claim writes: unique per claim, so a re-claim by the same worker fences too."""
    import uuid

    return f"{worker_id}/{uuid.uuid4().hex[:8]}"


def fence(s: Session, table: Any, item_id: str, token: str) -> None:
    """Go on with this unit of work only while ``token`` holds ``item_id``'s lease.

    The no-op UPDATE takes the row's lock until the session commits (Postgres; SQLite: the database write lock),
    so no claim can slip in between this check and the commit of the writes that follow it in ``s``.
    """
    result = s.exec(update(table).where(table.id == item_id, table.lease_owner == token).values(lease_owner=token))
    if result.rowcount != 1:
        raise LeaseLost(f"{table.__tablename__} {item_id}: the lease {token} is no longer held")


def held_update(s: Session, table: Any, item_id: str, token: str | None, *where: Any, **values: Any) -> bool:
    """Set ``values`` on ``item_id`` while ``token`` holds its lease (None: whoever holds it, e.g. a user's cancel)
    and every condition of ``where`` holds; True when the row was updated. The one shape of every worker write:
    heartbeat, progress, transition, finish, release."""
    query = update(table).where(table.id == item_id, *where)
    if token is not None:
        query = query.where(table.lease_owner == token)
    return bool(s.exec(query.values(**values)).rowcount == 1)


def renew(db: Database, table: Any, item_id: str, token: str, lease_s: float, *where: Any) -> bool:
    """Extend ``token``'s lease on ``item_id`` by ``lease_s`` from now; False when the lease is no longer held under
    it (taken over) or ``where`` no longer holds (e.g. the item was cancelled)."""
    with db.session() as s:
        return held_update(s, table, item_id, token, *where, lease_expires_at=time.time() + lease_s)
