"""Token usage per organization and API key: written in batches, summed on demand. Strings are cut to their
column's width (``fit``): a caller-shaped id or model name never makes a row unwritable."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import col, select

from storage.db import Database
from storage.tables import UsageRecord


@dataclass(frozen=True)
class UsageTotal:
    organization_id: str
    api_key_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


def fit(record: UsageRecord) -> UsageRecord:
    """``record`` with each string cut to its column's ``max_length``."""
    # SQLModel's stubs do not declare the __table__ SQLAlchemy gives every table model
    for column in UsageRecord.__table__.columns:  # type: ignore[attr-defined]
        value, width = getattr(record, column.name), getattr(column.type, "length", None)
        if isinstance(value, str) and width and len(value) > width:
            setattr(record, column.name, value[:width])
    return record


class UsageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_many(self, records: list[UsageRecord]) -> None:
        if records:
            with self.db.session() as s:
                s.add_all([fit(r) for r in records])

    def totals(self, organization_id: str | None = None) -> list[UsageTotal]:
        keys = (col(UsageRecord.organization_id), col(UsageRecord.api_key_id), col(UsageRecord.model))
        # sqlmodel's select() is typed for at most 4 columns; this one selects 6 (its runtime takes any number)
        query = select(
            *keys,
            func.count(),
            func.sum(UsageRecord.prompt_tokens),  # type: ignore[call-overload]
            func.sum(UsageRecord.completion_tokens),
        )
        if organization_id is not None:
            query = query.where(UsageRecord.organization_id == organization_id)
        with self.db.session() as s:
            rows = s.exec(query.group_by(*keys).order_by(*keys)).all()
        return [UsageTotal(o, k, m, int(n), int(p or 0), int(c or 0)) for o, k, m, n, p, c in rows]
