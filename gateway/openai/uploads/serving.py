"""Uploads service: create, receive a Part (streamed to a staged blob), complete (assemble → the Files path), cancel.

Completing hands the assembled blob to ``files.serving.store``, the path ``POST /v1/files`` takes: a fine-tune
file is checked and normalized in the bounded-memory child and an unusable one is the same 400 naming its lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar.concurrency import sync_to_thread

from gateway.openai.files import serving as files
from gateway.openai.files.protocol import BATCH_DEFAULT_EXPIRY_S
from gateway.openai.files.upload import read_upload
from gateway.openai.uploads.protocol import (
    MIME_TYPES,
    CompleteUploadRequest,
    CreateUploadRequest,
    UploadObject,
    UploadPartObject,
    parse,
)
from gateway.services import Services
from storage.accounts import Principal
from storage.errors import InvalidRequest, PayloadTooLarge
from storage.files import NewFile


async def create(services: Services, who: Principal, body: Any) -> UploadObject:
    request = parse(CreateUploadRequest, body)
    purpose = files.check_purpose(request.purpose)
    limit = services.settings.uploads.max_bytes
    if not 1 <= request.bytes <= limit:
        raise InvalidRequest(
            f"bytes must be between 1 and {limit} (the largest Upload).",
            param="bytes",
            code="file_too_large" if request.bytes > limit else "invalid_value",
        )
    org, filename = who.organization_id, files.check_filename(request.filename, "filename")
    mime_type, file_expiry = _mime_type(purpose, request.mime_type), _file_expiry(request)

    def add() -> Any:  # announced bytes count against the quota from now on: parts cannot exceed them
        services.quota.check(org, request.bytes + services.uploads.pending_bytes(org))
        return services.uploads.create(
            org,
            filename=filename,
            purpose=purpose,
            mime_type=mime_type,
            size=request.bytes,
            file_expires_after_s=file_expiry,
        )

    return UploadObject.of(await sync_to_thread(add))


def _mime_type(purpose: str, mime_type: str) -> str:
    kind = mime_type.split(";", 1)[0].strip().lower()
    allowed = MIME_TYPES.get(purpose)
    if kind.count("/") != 1 or not all(kind.split("/")) or (allowed is not None and kind not in allowed):
        expected = ", ".join(allowed) if allowed else "a type/subtype"
        raise InvalidRequest(
            f"mime_type {mime_type!r} is not supported for purpose {purpose!r}: expected {expected}.",
            param="mime_type",
            code="invalid_value",
        )
    return kind


def _file_expiry(request: CreateUploadRequest) -> int | None:
    """The File's lifetime (``expires_after`` is the File's policy; the Upload itself expires after an hour)."""
    if request.expires_after is None:
        return BATCH_DEFAULT_EXPIRY_S if request.purpose == "batch" else None
    return files.check_expiry(request.expires_after.seconds)


async def add_part(
    services: Services, who: Principal, upload_id: str, content_type: str, body: AsyncIterator[bytes]
) -> UploadPartObject:
    """The ``data`` form part streamed to a staged blob (capped at ``max_part_bytes``), then stored as a Part."""
    org, settings = who.organization_id, services.settings
    await sync_to_thread(services.uploads.pending, org, upload_id, "take parts")  # before reading any of the body
    with services.blobs.stage() as staged:
        try:
            form = await read_upload(
                content_type, body, staged, settings.uploads.max_part_bytes, settings.upload_stall_seconds
            )
        except PayloadTooLarge:
            raise PayloadTooLarge(
                f"A Part may be at most {settings.uploads.max_part_bytes} bytes.", param="data"
            ) from None
        if form.file_field is None and "data" in form.fields:  # sent as a plain form field (curl -F data=...)
            await sync_to_thread(staged.write, form.fields["data"].encode())
        elif form.file_field != "data":
            raise InvalidRequest(
                "Send the Part's bytes as the multipart field 'data'.", param="data", code="missing_required_parameter"
            )
        part = await sync_to_thread(services.uploads.add_part, org, upload_id, staged)
    return UploadPartObject.of(part)


async def complete(services: Services, who: Principal, upload_id: str, body: Any) -> UploadObject:
    request = parse(CompleteUploadRequest, body)
    org, uploads = who.organization_id, services.uploads
    with services.blobs.stage() as assembled:
        upload = await sync_to_thread(uploads.assemble, org, upload_id, request.part_ids, request.md5, assembled)
        new = NewFile(
            organization_id=org,
            filename=upload.filename,
            purpose=upload.purpose,
            original=assembled,
            expires_after_s=upload.file_expires_after_s,
        )
        file = await files.store(services, new, within=uploads.completer(org, upload_id))
    await sync_to_thread(uploads.discard_parts, upload_id)
    return UploadObject.of(await sync_to_thread(uploads.get, org, upload_id), file)


def cancel(services: Services, who: Principal, upload_id: str) -> UploadObject:
    return UploadObject.of(services.uploads.cancel(who.organization_id, upload_id))
