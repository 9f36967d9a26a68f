"""Files service: upload (stream → check → normalize → store), list, retrieve, content, delete."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
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
from storage.blobs import StagedBlob
from storage.errors import InvalidFile, InvalidRequest
from storage.files import NewFile
from storage.settings import Settings
from storage.tables import StoredFile

_BAD_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")
CHUNK = 1 << 16


async def create(services: Services, who: Principal, content_type: str, body: AsyncIterator[bytes]) -> FileObject:
    with services.blobs.stage() as original:
        form = await read_upload(content_type, body, original, services.settings.max_upload_bytes,
                                 services.settings.upload_stall_seconds)
        new = NewFile(
            organization_id=who.organization_id, filename=_filename(form), purpose=_purpose(form),
            original=original, expires_after_s=_expiry(form),
        )
        row = await store(services, new)
    return FileObject.of(row)


async def store(services: Services, new: NewFile, within: Callable[[Session, StoredFile], None] | None = None) -> StoredFile:
    """The one way from a staged blob to a File (``POST /v1/files`` and a completed Upload): a fine-tune file is
    checked and normalized first (a 400 naming the problem lines), then blobs and row are stored (``Files.create``)."""
    if new.purpose != "fine-tune":
        return await sync_to_thread(services.files.create, new, within)
    with services.blobs.stage() as normalized:
        await _normalize(new, normalized, services.settings.max_example_bytes)
        return await sync_to_thread(services.files.create, new, within)


async def _normalize(new: NewFile, staged: StagedBlob, max_example_bytes: int) -> None:
    """Check the upload and write its normalized form to ``staged``, in a memory-capped child (check.py)."""
    await sync_to_thread(new.original.close)
    staged.close()  # the child writes the path
    limit = memory_limit(max_example_bytes)
    result = await check_in_child(new.original.path, staged.path, max_example_bytes, limit,
                                  Settings.child_environ(database=False))
    if result is None:
        raise InvalidFile(f"The file could not be checked within {limit >> 20} MiB of memory; "
                          "send smaller examples.", param="file")
    if result.problems:
        raise InvalidFile(result.problems, param="file")
    new.normalized = await sync_to_thread(StagedBlob.adopt, staged.path)
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
            "characters), never a path.", param=param, code="invalid_filename",
        )
    return name


def _purpose(form: UploadForm) -> str:
    return check_purpose(form.fields.get("purpose"))


def check_purpose(purpose: str | None) -> str:
    if not purpose:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {purpose!r}: expected one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose", code="invalid_value"
        )
    return purpose


def _expiry(form: UploadForm) -> int | None:
    anchor = form.fields.get("expires_after[anchor]")
    seconds = form.fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return BATCH_DEFAULT_EXPIRY_S if form.fields.get("purpose") == "batch" else None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor", code="invalid_value")
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    return check_expiry(value)


def check_expiry(seconds: int) -> int:
    if not MIN_EXPIRY_S <= seconds <= MAX_EXPIRY_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be an integer between {MIN_EXPIRY_S} and {MAX_EXPIRY_S}.",
            param="expires_after.seconds", code="invalid_value",
        )
    return seconds


def list_files(services: Services, who: Principal, **query: Any) -> dict[str, Any]:
    page = services.files.list(who.organization_id, **query)
    return list_page([FileObject.of(r) for r in page.items], has_more=page.has_more, ids=True)


def retrieve(services: Services, who: Principal, file_id: str) -> FileObject:
    return FileObject.of(services.files.get(who.organization_id, file_id))


def content(services: Services, who: Principal, file_id: str, normalized: bool) -> Iterator[bytes]:
    _, fh = services.files.open_content(who.organization_id, file_id, normalized=normalized)

    def chunks() -> Iterator[bytes]:
        with fh:
            while block := fh.read(CHUNK):
                yield block

    return chunks()


def delete(services: Services, who: Principal, file_id: str) -> None:
    services.files.delete(who.organization_id, file_id)
