"""An organization's storage quota: its files' bytes (uploads, job result files, export outputs) plus its adapters'.

Checked — ``QuotaExceeded``, a 403 ``storage_quota_exceeded`` naming the quota and the numbers — when the API stores
a file (once the upload is received and its size known; nothing of it is kept) and when a fine-tuning job or an
export is created (refused while the organization is at or over its quota). A job or an export already running is
not stopped: what it writes counts, and the next upload or creation is refused.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import col, select

from storage.accounts import limit_overrides
from storage.blobs import BlobStore
from storage.db import Database
from storage.errors import QuotaExceeded
from storage.settings import LimitSettings
from storage.tables import FineTunedModel, StoredFile


class StorageQuota:
    def __init__(self, db: Database, blobs: BlobStore, defaults: LimitSettings) -> None:
        self.db, self.blobs, self.defaults = db, blobs, defaults

    def used(self, org_id: str) -> int:
        """Bytes the organization stores: its files as listed, and its adapters' directories on the blob store."""
        with self.db.session() as s:
            files = s.exec(
                select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(StoredFile.organization_id == org_id)
            ).one()
            adapters = s.exec(
                select(FineTunedModel.adapter_key).where(
                    FineTunedModel.organization_id == org_id, col(FineTunedModel.adapter_key).is_not(None)
                )
            ).all()
        return int(files) + sum(self.blobs.size(key) for key in set(adapters) if key is not None)

    def check(self, org_id: str, adding: int = 1) -> None:
        """Refuse when ``adding`` more bytes would take the organization over its quota."""
        with self.db.session() as s:
            quota = limit_overrides(s, [org_id]).get(org_id, {}).get("storage_bytes", self.defaults.storage_bytes)
        if quota is None:
            return
        used = self.used(org_id)
        if used + adding > quota:
            raise QuotaExceeded(
                f"Storage quota exceeded for organization {org_id}: quota {quota} bytes, {used} used, "
                f"{adding} more requested. Delete files or models, or ask an administrator for a larger quota "
                "(storage_bytes).",
                param="storage_bytes",
            )
