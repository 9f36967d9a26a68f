"""Uploads: a file sent in Parts, each staged in the blob store, then assembled by streaming into one staged blob.

A Part's bytes live under ``uploads/<upload id>/<part id>`` from its arrival until its Upload ends. Completing
turns them into one staged blob (in the order the client names, md5 computed on the way) that the caller stores
as a File, in the same transaction that marks the Upload completed; cancelling or expiring deletes them. A Part's
blob is committed before its row, and an Upload's tree is deleted after its row leaves ``pending``: a crash can
leave the bytes of an ended Upload (removed by the next sweep), never a Part row without bytes.

This module does not know what a File's content must be: checking and normalizing the assembled blob is the
Files path's job (``gateway/openai/files/serving.store``), the same as for ``POST /v1/files``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import func
from sqlmodel import Session, col, delete, select

from storage.blobs import BlobStore, StagedBlob
from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.ids import new_id, now
from storage.settings import UploadSettings
from storage.tables import StoredFile, Upload, UploadPart

CHUNK = 1 << 20


class UploadStore:
    def __init__(self, db: Database, blobs: BlobStore, settings: UploadSettings) -> None:
        self.db, self.blobs, self.settings = db, blobs, settings

    def create(
        self, org_id: str, *, filename: str, purpose: str, mime_type: str, size: int, file_expires_after_s: int | None
    ) -> Upload:
        created = now()
        row = Upload(
            id=new_id("upload_"),
            organization_id=org_id,
            filename=filename,
            purpose=purpose,
            mime_type=mime_type,
            bytes=size,
            created_at=created,
            expires_at=created + self.settings.expires_after_seconds,
            file_expires_after_s=file_expires_after_s,
        )
        with self.db.session() as s:
            s.add(row)
        return row

    def pending_bytes(self, org_id: str) -> int:
        """Bytes the organization's pending Uploads have announced: counted against its storage quota."""
        with self.db.session() as s:
            return int(
                s.exec(
                    select(func.coalesce(func.sum(Upload.bytes), 0)).where(
                        Upload.organization_id == org_id, Upload.status == "pending", col(Upload.expires_at) > now()
                    )
                ).one()
            )

    def pending(self, org_id: str, upload_id: str, action: str) -> Upload:
        with self.db.session() as s:
            return _pending(s, org_id, upload_id, action)

    def add_part(self, org_id: str, upload_id: str, staged: StagedBlob) -> UploadPart:
        """Store a received Part. Refused when the Upload is no longer pending or the Part takes its bytes past
        the declared size (then nothing of it is kept)."""
        part = UploadPart(id=new_id("part_"), upload_id=upload_id, bytes=staged.size, created_at=now())
        key = f"uploads/{upload_id}/{part.id}"
        self.blobs.commit(staged, key)
        try:
            with self.db.session() as s:
                upload = _pending(s, org_id, upload_id, "take parts", lock=True)
                received = _received(s, upload_id)
                if received + part.bytes > upload.bytes:
                    raise InvalidRequest(
                        f"This Part ({part.bytes} bytes) would take Upload {upload_id} to "
                        f"{received + part.bytes} bytes, "
                        f"more than the {upload.bytes} declared in its 'bytes'.",
                        param="data",
                        code="upload_too_large",
                    )
                s.add(part)
        except BaseException:
            self.blobs.delete_prefix(key)
            raise
        return part

    def assemble(self, org_id: str, upload_id: str, part_ids: list[str], md5: str | None, target: StagedBlob) -> Upload:
        """Concatenate the named Parts, in that order, into ``target`` (streamed, ``CHUNK`` at a time); check the
        total against the declared ``bytes`` and, when given, the md5. The Upload stays pending."""
        with self.db.session() as s:
            upload = _pending(s, org_id, upload_id, "be completed")
            parts = {p.id: p for p in s.exec(select(UploadPart).where(UploadPart.upload_id == upload_id))}
        unknown = [p for p in part_ids if p not in parts]
        if unknown:
            raise InvalidRequest(
                f"Unknown Part id(s) for Upload {upload_id}: {', '.join(unknown[:10])}.",
                param="part_ids",
                code="invalid_value",
            )
        if len(set(part_ids)) != len(part_ids):
            raise InvalidRequest("part_ids names a Part more than once.", param="part_ids", code="invalid_value")
        total = sum(parts[p].bytes for p in part_ids)
        if total != upload.bytes:
            raise InvalidRequest(
                f"The Parts add up to {total} bytes, but the Upload was created with bytes={upload.bytes}: "
                "the number of bytes uploaded must match.",
                param="bytes",
                code="bytes_mismatch",
            )
        digest = hashlib.md5(usedforsecurity=False) if md5 else None
        for part_id in part_ids:
            with self.blobs.open(f"uploads/{upload_id}/{part_id}") as fh:
                while block := fh.read(CHUNK):
                    target.write(block)
                    if digest is not None:
                        digest.update(block)
        if digest is not None and md5 and digest.hexdigest() != md5.strip().lower():
            raise InvalidRequest(
                f"md5 mismatch: the assembled file's md5 is {digest.hexdigest()}, not {md5}.",
                param="md5",
                code="md5_mismatch",
            )
        return upload

    def completer(self, org_id: str, upload_id: str) -> Callable[[Session, StoredFile], None]:
        """For ``Files.create(..., within=)``: marks the Upload completed with the File, in the File's transaction
        (refused if it stopped being pending meanwhile, and then the File is not stored either)."""

        def complete(s: Session, file: StoredFile) -> None:
            upload = _pending(s, org_id, upload_id, "be completed", lock=True)
            upload.status, upload.file_id = "completed", file.id
            s.add(upload)
            s.exec(delete(UploadPart).where(col(UploadPart.upload_id) == upload_id))

        return complete

    def cancel(self, org_id: str, upload_id: str) -> Upload:
        with self.db.session() as s:
            upload = _pending(s, org_id, upload_id, "be cancelled", lock=True)
            _end(s, upload, "cancelled")
        self.blobs.delete_prefix(f"uploads/{upload_id}")
        return upload

    def get(self, org_id: str, upload_id: str) -> Upload:
        with self.db.session() as s:
            return _mine(s, org_id, upload_id)

    def discard_parts(self, upload_id: str) -> None:
        self.blobs.delete_prefix(f"uploads/{upload_id}")

    def sweep_expired(self) -> int:
        """Expire pending Uploads past ``expires_at`` (their Parts deleted), and delete any ended Upload's staged
        bytes a crash left behind. Returns how many Uploads expired."""
        with self.db.session() as s:
            expired = list(s.exec(select(Upload).where(Upload.status == "pending", col(Upload.expires_at) <= now())))
            for upload in expired:
                _end(s, upload, "expired")
        for upload in expired:
            self.blobs.delete_prefix(f"uploads/{upload.id}")
        for prefix in list(self.blobs.prefixes("uploads")):
            with self.db.session() as s:
                status = s.exec(select(Upload.status).where(Upload.id == prefix.split("/", 1)[1])).first()
            if status != "pending":
                self.blobs.delete_prefix(prefix)
        return len(expired)


def status_now(upload: Upload) -> str:
    """The status a client sees: a pending Upload past its ``expires_at`` is expired, swept or not yet."""
    return "expired" if upload.status == "pending" and upload.expires_at <= now() else upload.status


def _mine(s: Session, org_id: str, upload_id: str, *, lock: bool = False) -> Upload:
    """The organization's Upload, or "not found" (also when another organization owns it)."""
    query = select(Upload).where(Upload.id == upload_id, Upload.organization_id == org_id)
    row = s.exec(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
    return row


def _pending(s: Session, org_id: str, upload_id: str, action: str, *, lock: bool = False) -> Upload:
    upload = _mine(s, org_id, upload_id, lock=lock)
    status = status_now(upload)
    if status != "pending":
        raise InvalidRequest(
            f"Upload {upload_id} is {status}: only a pending Upload can {action}.",
            param="upload_id",
            code="invalid_upload_status",
        )
    return upload


def _received(s: Session, upload_id: str) -> int:
    return int(
        s.exec(select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(UploadPart.upload_id == upload_id)).one()
    )


def _end(s: Session, upload: Upload, status: str) -> None:
    upload.status = status
    s.add(upload)
    s.exec(delete(UploadPart).where(col(UploadPart.upload_id) == upload.id))
