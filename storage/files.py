"""File rows and their blobs, kept consistent.

Create: blobs are committed under ``files/<id>/`` first, then the row; if the row fails, the blobs go.
Delete: the row goes first, then the blobs. Either way a crash can leave an orphan blob (reaped by
``reap_orphans``) but never a row pointing at nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Generic, Literal, TypeVar

from sqlalchemy import or_
from sqlmodel import Session, col, select

from storage.blobs import BlobStore, StagedBlob
from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.ids import new_id, now
from storage.tables import StoredFile

Order = Literal["asc", "desc"]
MAX_PAGE = 10000  # OpenAI's default and largest files.list page
T = TypeVar("T")


@dataclass
class NewFile:
    organization_id: str
    filename: str
    purpose: str
    original: StagedBlob
    expires_after_s: int | None = None
    normalized: StagedBlob | None = None
    data_format: str | None = None
    data_kind: str | None = None
    n_examples: int | None = None


@dataclass
class Page(Generic[T]):
    """One page of a newest-first (or oldest-first) list and whether more follow."""

    items: list[T]
    has_more: bool


def keyset_page(
    s: Session,
    table: Any,
    where: list[Any],
    *,
    limit: int,
    after: str | None,
    ascending: bool,
    missing: Callable[[str], Exception],
    anchor_where: list[Any] | None = None,
) -> Page:
    """``limit`` rows of ``table`` matching ``where`` in ``seq`` order, after the row with id ``after`` (which must
    match ``anchor_where``, by default ``where``, else ``missing(after)`` is raised), and whether more follow."""
    query = select(table).where(*where)
    if after:
        anchor = s.exec(
            select(table.seq).where(*(where if anchor_where is None else anchor_where), table.id == after)
        ).first()
        if anchor is None:
            raise missing(after)
        query = query.where(col(table.seq) > anchor if ascending else col(table.seq) < anchor)
    order = col(table.seq) if ascending else col(table.seq).desc()
    rows = s.exec(query.order_by(order).limit(limit + 1)).all()
    return Page(list(rows[:limit]), len(rows) > limit)


class Files:
    def __init__(self, db: Database, blobs: BlobStore, quota: Callable[[str, int], None] | None = None) -> None:
        self.db = db
        self.blobs = blobs
        self.quota = quota  # the API's files: refuse one that would exceed its organization's storage quota

    def create(self, new: NewFile, within: Callable[[Session, StoredFile], None] | None = None) -> StoredFile:
        """Store ``new``; ``within`` runs in the row's transaction (an Upload marked completed with its File)."""
        row = self.store_blobs(new)
        try:
            with self.db.session() as s:
                s.add(row)
                if within is not None:
                    within(s, row)
        except BaseException:
            self.blobs.delete_prefix(f"files/{row.id}")
            raise
        return row

    def store_blobs(self, new: NewFile) -> StoredFile:
        """The blobs of ``new`` committed and its row built but not inserted: for a caller that inserts the row in
        its own transaction (a job's results file commits with the job's end). Until then the file is invisible."""
        if self.quota is not None:
            self.quota(new.organization_id, new.original.size)
        file_id = new_id("file-")
        created = now()
        normalized_key = f"files/{file_id}/normalized.jsonl" if new.normalized is not None else None
        row = StoredFile(
            id=file_id,
            organization_id=new.organization_id,
            filename=new.filename,
            purpose=new.purpose,
            bytes=new.original.size,
            created_at=created,
            expires_at=created + new.expires_after_s if new.expires_after_s else None,
            blob_key=f"files/{file_id}/original",
            normalized_blob_key=normalized_key,
            data_format=new.data_format,
            data_kind=new.data_kind,
            n_examples=new.n_examples,
        )
        try:
            self.blobs.commit(new.original, row.blob_key)
            if new.normalized is not None and normalized_key is not None:
                self.blobs.commit(new.normalized, normalized_key)
        except BaseException:
            self.blobs.delete_prefix(f"files/{file_id}")
            raise
        return row

    def get(self, org_id: str, file_id: str) -> StoredFile:
        with self.db.session() as s:
            return _visible(s, org_id, file_id)

    def list(
        self,
        org_id: str,
        *,
        purpose: str | None = None,
        order: Order = "desc",
        limit: int = MAX_PAGE,
        after: str | None = None,
    ) -> Page[StoredFile]:
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
        mine = StoredFile.organization_id == org_id
        where = [mine, _not_expired(now())] + ([StoredFile.purpose == purpose] if purpose else [])

        def missing(after: str) -> InvalidRequest:
            return InvalidRequest(f"after: no such File object: {after}", param="after")

        with self.db.session() as s:  # the anchor may have expired since the last page: paging goes on past it
            return keyset_page(
                s,
                StoredFile,
                where,
                limit=limit,
                after=after,
                ascending=order == "asc",
                missing=missing,
                anchor_where=[mine],
            )

    def content_key(self, org_id: str, file_id: str, *, normalized: bool = False) -> tuple[StoredFile, str]:
        row = self.get(org_id, file_id)
        key = row.blob_key
        if normalized:
            if row.normalized_blob_key is None:
                raise InvalidRequest(f"File {file_id} has no normalized form (purpose {row.purpose}).", param="format")
            key = row.normalized_blob_key
        return row, key

    def open_content(self, org_id: str, file_id: str, *, normalized: bool = False) -> tuple[StoredFile, BinaryIO]:
        row, key = self.content_key(org_id, file_id, normalized=normalized)
        return row, self.blobs.open(key)

    def delete(self, org_id: str, file_id: str) -> None:
        with self.db.session() as s:
            s.delete(_visible(s, org_id, file_id))
        self.blobs.delete_prefix(f"files/{file_id}")

    def sweep_expired(self) -> int:
        """Delete every expired file (row, then blobs). Returns how many."""
        with self.db.session() as s:
            expired = list(s.exec(select(StoredFile).where(col(StoredFile.expires_at) <= now())))
            for row in expired:
                s.delete(row)
        for row in expired:
            self.blobs.delete_prefix(f"files/{row.id}")
        return len(expired)

    def reap_orphans(self, min_age_s: float = 3600.0) -> int:
        """Remove ``files/<id>`` blob trees with no row (left by a crash between blob and row).

        Only trees older than ``min_age_s``: a younger one may belong to an upload whose row is being written.
        """
        removed = 0
        for prefix in list(self.blobs.prefixes("files")):
            file_id = prefix.split("/", 1)[1]
            if self.blobs.age_seconds(prefix) < min_age_s:
                continue
            with self.db.session() as s:
                exists = s.exec(select(StoredFile.seq).where(StoredFile.id == file_id)).first() is not None
            if not exists:
                self.blobs.delete_prefix(prefix)
                removed += 1
        return removed


def _visible(s: Session, org_id: str, file_id: str) -> StoredFile:
    """The organization's unexpired file, or "not found" (also when another organization owns it)."""
    row = s.exec(
        select(StoredFile).where(StoredFile.id == file_id, StoredFile.organization_id == org_id, _not_expired(now()))
    ).first()
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="id")
    return row


def _not_expired(at: int):  # noqa: ANN202 - SQL expression
    return or_(col(StoredFile.expires_at).is_(None), col(StoredFile.expires_at) > at)
