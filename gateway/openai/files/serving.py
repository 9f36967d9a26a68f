"""Files service: upload (stream → check → normalize → store), list, retrieve, content, delete."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from litestar.concurrency import sync_to_thread
from sqlmodel import Session

from finetune.formats.check import check_in_child, memory_limit
from gateway.openai.common import list_page
from gateway.openai.files.protocol import (
    BATCH_DEFAULT_EXPIRY_S,
    MAX_EXPIRY_S,
    MIN_EXPIRY_S,
    UPLOAD_PURPOSES,
    FileObject,
)
from gateway.openai.files.upload import UploadForm, read_upload
from gateway.services import Services
from storage.accounts import Principal
from storage.blobs import BlobStore
from storage.errors import InvalidFile, InvalidRequest
from storage.files import NewFile
from storage.settings import Settings
from storage.tables import StoredFile

_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
CHUNK = 1 << 16


async def create(services: Services, who: Principal, content_type: str, body: AsyncIterator[bytes]) -> FileObject:
    with services.blobs.stage() as original:
        form = await read_upload(
            content_type, body, original, services.settings.max_upload_bytes, services.settings.upload_stall_seconds
        )
        new = NewFile(
            organization_id=who.organization_id,
            filename=_filename(form),
            purpose=_purpose(form),
            original=original,
            expires_after_s=_expiry(form),
        )
        row = await store(services, new)
    return FileObject.of(row)


async def store(
    services: Services, new: NewFile, within: Callable[[Session, StoredFile], None] | None = None
) -> StoredFile:
    """The one way from a staged blob to a File (``POST /v1/files`` and a completed Upload): a fine-tune file is
    checked and normalized first (a 400 naming the problem lines), then blobs and row are stored (``Files.create``)."""
    if new.purpose != "fine-tune":
        return await sync_to_thread(services.files.create, new, within)
    target = services.blobs.scratch / f"{uuid.uuid4().hex}.part"  # the child writes it; swept like staging if lost
    try:
        await _normalize(services.blobs, new, target, services.settings.max_example_bytes)
        return await sync_to_thread(services.files.create, new, within)
    finally:
        if new.normalized is not None:
            await sync_to_thread(new.normalized.discard)  # a no-op once committed
        target.unlink(missing_ok=True)


async def _normalize(blobs: BlobStore, new: NewFile, target: Path, max_example_bytes: int) -> None:
    """Check the upload and write its normalized form to ``target``, in a memory-capped child (check.py). The child
    reads a file: the staged blob's own (local store), or a scratch copy of it (S3), removed with the staged blob."""
    source = await sync_to_thread(blobs.staged_path, new.original)
    limit = memory_limit(max_example_bytes)
    result = await check_in_child(source, target, max_example_bytes, limit, Settings.child_environ(database=False))
    if result is None:
        raise InvalidFile(
            f"The file could not be checked within {limit >> 20} MiB of memory; send smaller examples.", param="file"
        )
    if result.problems:
        raise InvalidFile(result.problems, param="file")
    new.normalized = await sync_to_thread(blobs.adopt, target)
    new.data_format, new.data_kind, new.n_examples = result.format, result.kind, result.n_examples


def _filename(form: UploadForm) -> str:
    if form.file_field is None:
        raise InvalidRequest("Missing the 'file' part: send the file as multipart field 'file'.", param="file")
    if form.file_field != "file":
        raise InvalidRequest(f"The file must be sent in the 'file' field, not '{form.file_field}'.", param="file")
    return check_filename(form.filename or "", "file")


def check_filename(name: str, param: str) -> str:
    if not name or name in (".", "..") or _BAD_NAME.search(name) or len(name) > 255:
        raise InvalidRequest(
            f"Invalid filename {name!r}: a filename is a plain name (1-255 characters, no '/', '\\' or control "
            "characters), never a path.",
            param=param,
            code="invalid_filename",
        )
    return name


def _purpose(form: UploadForm) -> str:
    return check_purpose(form.fields.get("purpose"))


def check_purpose(purpose: str | None) -> str:
    if not purpose:
        raise InvalidRequest(
            "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {purpose!r}: expected one of {', '.join(UPLOAD_PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    return purpose


def _expiry(form: UploadForm) -> int | None:
    anchor = form.fields.get("expires_after[anchor]")
    seconds = form.fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return BATCH_DEFAULT_EXPIRY_S if form.fields.get("purpose") == "batch" else None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor", code="invalid_value"
        )
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    return check_expiry(value)


def check_expiry(seconds: int) -> int:
    if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be an integer between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}.",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return seconds


def list_files(services: Services, who: Principal, **query: Any) -> dict[str, Any]:
    page = services.files.list(who.organization_id, **query)
    return list_page([FileObject.of(r) for r in page.items], has_more=page.has_more, ids=True)


def retrieve(services: Services, who: Principal, file_id: str) -> FileObject:
    return FileObject.of(services.files.get(who.organization_id, file_id))


def content(
    services: Services, who: Principal, file_id: str, normalized: bool, byte_range: str | None = None
) -> tuple[Iterator[bytes], int, dict[str, str]]:
    """The file's bytes as (chunks, status, headers): all of them (200), or the one range a ``Range: bytes=…``
    header names (206; 416 when it lies outside the file), read by the store itself (an S3 ranged GET)."""
    row, key = services.files.content_key(who.organization_id, file_id, normalized=normalized)
    size = row.bytes if not normalized else services.blobs.size(key)
    headers = {"accept-ranges": "bytes"}
    span = _byte_range(byte_range, size) if byte_range else None
    if span is None:
        return _chunks(services.blobs.open(key)), 200, headers
    start, end = span
    if start > end:
        raise RangeNotSatisfiable(size)
    headers["content-range"] = f"bytes {start}-{end}/{size}"
    return _chunks(services.blobs.open_range(key, start, end)), 206, headers


class RangeNotSatisfiable(Exception):
    """Answered 416 by the route, with ``Content-Range: bytes */<size>`` (RFC 9110) and the OpenAI error body."""

    def __init__(self, size: int) -> None:
        super().__init__(f"The Range header names no bytes of this {size}-byte file.")
        self.size = size


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → (start, end) inclusive, clamped to the file; start > end when
    nothing of the file is named. Several ranges, or another unit: None (the whole file, as RFC 9110 allows)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash:
            return None
        if not first:  # the last n bytes
            n = int(last)
            return (max(size - n, 0), size - 1) if n > 0 else (1, 0)
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and int(last) < start):
        return None
    return start, end


def _chunks(fh: Any) -> Iterator[bytes]:
    def chunks() -> Iterator[bytes]:
        with fh:
            while block := fh.read(CHUNK):
                yield block

    return chunks()


def delete(services: Services, who: Principal, file_id: str) -> None:
    services.files.delete(who.organization_id, file_id)
