"""Files wire schemas (``OpenAIFile``)."""

from __future__ import annotations

from typing import Literal

import msgspec

from storage.tables import StoredFile

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 2_592_000
BATCH_DEFAULT_EXPIRY_S = 30 * 24 * 3600


class FileObject(msgspec.Struct, omit_defaults=True):
    object: Literal["file"]  # required (not defaulted) so that omit_defaults never drops it
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int | None = None  # the spec types it as a non-null integer: omitted when there is none
    status_details: str | None = None

    @classmethod
    def of(cls, row: StoredFile) -> FileObject:
        return cls(
            object="file",
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            expires_at=row.expires_at,
            status_details=row.status_details,
        )
