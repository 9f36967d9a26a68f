"""Exports: rows filtered on the organization, claimed by workers under a lease like jobs and eval runs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.files import Page, keyset_page
from storage.ids import now
from storage.leases import OrgCap, claim_oldest, held_update, renew
from storage.tables import Export, StoredFile

ACTIVE = ("queued", "running")


class ExportStore:
    def __init__(self, db: Database, running_cap: int | None = None) -> None:
        self.db = db
        self.cap = OrgCap("running_exports", running_cap)  # per organization; its override wins

    def add(self, row: Export) -> Export:
        with self.db.session() as s:
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def get(self, org_id: str | None, export_id: str) -> Export:
        with self.db.session() as s:
            query = select(Export).where(Export.id == export_id)
            if org_id is not None:
                query = query.where(Export.organization_id == org_id)
            row = s.exec(query).first()
        if row is None:
            raise NotFound(f"No export found with id '{export_id}'.", param="export_id", code="export_not_found")
        return row

    def list(self, org_id: str, *, limit: int, after: str | None, ascending: bool = False) -> Page[Export]:
        with self.db.session() as s:
            return keyset_page(
                s,
                Export,
                [Export.organization_id == org_id],
                limit=limit,
                after=after,
                ascending=ascending,
                missing=lambda after: NotFound(f"No export found with id '{after}'.", param="after"),
            )

    def cancel(self, org_id: str, export_id: str) -> Export:
        row = self.get(org_id, export_id)
        if row.status not in ACTIVE:
            raise InvalidRequest(
                f"Export {export_id} is {row.status} and can no longer be cancelled.",
                param="export_id",
                code="invalid_export_state",
            )
        self.finish(export_id, None, status="cancelled", stage="cancelled")
        return self.get(org_id, export_id)

    def claim(self, worker: str, lease_s: float) -> Export | None:
        """A queued export, or a running one whose worker stopped renewing its lease (it starts over)."""
        t = time.time()
        export_id = claim_oldest(
            self.db,
            Export,
            col(Export.status).in_(ACTIVE),
            t,
            self.cap,
            lease_owner=worker,
            lease_expires_at=t + lease_s,
            status="running",
            progress=0.0,
            stage="starting",
        )
        return self.get(None, export_id) if export_id else None

    def heartbeat(self, export_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when the export was cancelled or taken over."""
        return renew(self.db, Export, export_id, worker, lease_s, Export.status == "running")

    def progress(self, export_id: str, worker: str, progress: float, stage: str) -> bool:
        return self._update(export_id, worker, progress=progress, stage=stage[:512])

    def warn(self, export_id: str, worker: str, message: str) -> None:
        row = self.get(None, export_id)
        self._update(export_id, worker, warnings=[*row.warnings, message])

    def finish(self, export_id: str, worker: str | None, files: Sequence[StoredFile] = (), **values: Any) -> bool:
        """End an export (succeeded / failed / cancelled) and drop its lease; a worker only ends its own claim.
        ``files`` (output rows whose blobs are stored) become visible in the same commit, or not at all."""
        with self.db.session() as s:
            if not held_update(
                s,
                Export,
                export_id,
                worker,
                col(Export.status).in_(ACTIVE),
                lease_owner=None,
                lease_expires_at=None,
                finished_at=now(),
                **values,
            ):
                return False
            s.add_all(files)
            return True

    def _update(self, export_id: str, worker: str, **values: Any) -> bool:
        with self.db.session() as s:
            return held_update(s, Export, export_id, worker, Export.status == "running", **values)
