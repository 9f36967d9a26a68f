"""Claiming work under a lease: fine-tuning jobs and eval runs share one way to take the oldest free row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, or_, update
from sqlmodel import col, select

from storage.db import Database


def claim_oldest(db: Database, table: Any, claimable: ColumnElement[bool], now: float, **values: Any) -> str | None:
    """Set ``values`` on the oldest claimable row whose lease is free or lapsed; its id, or None.

    Postgres: ``FOR UPDATE SKIP LOCKED`` lets concurrent workers pass each other; SQLite: the conditional update
    (status unchanged, lease still free) makes a race lose cleanly.
    """
    free = or_(col(table.lease_owner).is_(None), col(table.lease_expires_at) < now)
    with db.session() as s:
        query = select(table).where(claimable, free).order_by(col(table.seq)).limit(1)
        if db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = s.exec(query).first()
        if row is None:
            return None
        result = s.exec(update(table).where(  # type: ignore[call-overload]
            table.id == row.id, table.status == row.status, claimable, free).values(**values))
        return row.id if result.rowcount == 1 else None
