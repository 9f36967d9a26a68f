"""Uploads wire schemas (``CreateUploadRequest``, ``CompleteUploadRequest``, ``Upload``, ``UploadPart``)."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from gateway.openai.files.protocol import FileObject
from storage.errors import InvalidRequest
from storage.tables import StoredFile, Upload, UploadPart
from storage.uploads import status_now

# The mime types each purpose may declare. fine-tune, batch and evals files are read as JSON lines (or, fine-tune,
# one JSON array); assistants and user_data files are stored as they are, so any type/subtype goes.
_JSON = (
    "text/jsonl",
    "application/jsonl",
    "application/x-jsonlines",
    "application/x-ndjson",
    "application/json",
    "text/plain",
)
MIME_TYPES: dict[str, tuple[str, ...]] = {
    "fine-tune": _JSON,
    "batch": _JSON,
    "evals": _JSON,
    "vision": ("image/png", "image/jpeg", "image/gif", "image/webp"),
}


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: StrictInt


class CreateUploadRequest(BaseModel):
    """Unknown fields are ignored, as api.openai.com does."""

    model_config = ConfigDict(extra="ignore")

    filename: StrictStr
    purpose: StrictStr
    bytes: StrictInt
    mime_type: StrictStr
    expires_after: ExpiresAfter | None = None


class CompleteUploadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    part_ids: list[StrictStr]
    md5: StrictStr | None = None


T = TypeVar("T", bound=BaseModel)


def parse(model: type[T], body: Any) -> T:
    """``body`` as ``model``, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        raise InvalidRequest(f"Invalid {where}: {first['msg']}.", param=where, code=code) from None


class UploadObject(msgspec.Struct):
    object: Literal["upload"]
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int
    file: FileObject | None = None  # the File, once completed

    @classmethod
    def of(cls, row: Upload, file: StoredFile | None = None) -> UploadObject:
        return cls(
            object="upload",
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            filename=row.filename,
            purpose=row.purpose,
            status=status_now(row),
            expires_at=row.expires_at,
            file=FileObject.of(file) if file is not None else None,
        )


class UploadPartObject(msgspec.Struct):
    object: Literal["upload.part"]
    id: str
    created_at: int
    upload_id: str

    @classmethod
    def of(cls, row: UploadPart) -> UploadPartObject:
        return cls(object="upload.part", id=row.id, created_at=row.created_at, upload_id=row.upload_id)
