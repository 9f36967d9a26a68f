"""Batches wire schemas (``CreateBatchRequest``, ``Batch``, ``ListBatchesResponse``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, StrictStr, StringConstraints, field_validator

from gateway.openai.uploads.protocol import ExpiresAfter
from storage.tables import Batch

MetadataKey = Annotated[str, StringConstraints(max_length=64, strict=True)]
MetadataValue = Annotated[str, StringConstraints(max_length=512, strict=True)]


class CreateBatchRequest(BaseModel):
    """Unknown fields are ignored, as api.openai.com does."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: StrictStr
    endpoint: StrictStr
    completion_window: StrictStr
    metadata: dict[MetadataKey, MetadataValue] | None = None
    output_expires_after: ExpiresAfter | None = None  # the output and error files'

    @field_validator("metadata")
    @classmethod
    def _at_most_16(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and len(value) > 16:
            raise ValueError("metadata holds at most 16 pairs")
        return value


class RequestCounts(msgspec.Struct):
    total: int
    completed: int
    failed: int


class BatchErrors(msgspec.Struct):
    object: Literal["list"]
    data: list[dict[str, Any]]


class BatchObject(msgspec.Struct, omit_defaults=True):
    """The spec types every timestamp and file id as a non-null value: those not reached yet are omitted."""

    id: str
    object: Literal["batch"]
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    request_counts: RequestCounts
    usage: dict[str, Any]
    metadata: dict[str, str] | None
    model: str | None = None
    errors: BatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    expires_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None

    @classmethod
    def of(cls, row: Batch) -> BatchObject:
        return cls(
            id=row.id,
            object="batch",
            endpoint=row.endpoint,
            input_file_id=row.input_file_id,
            completion_window=row.completion_window,
            status=row.status,
            created_at=row.created_at,
            request_counts=RequestCounts(row.total, row.completed, row.failed),
            usage={
                "input_tokens": row.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": row.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": row.input_tokens + row.output_tokens,
            },
            metadata=row.metadata_,
            model=row.model,
            errors=BatchErrors("list", row.errors) if row.errors else None,
            output_file_id=row.output_file_id,
            error_file_id=row.error_file_id,
            expires_at=row.expires_at,
            in_progress_at=row.in_progress_at,
            finalizing_at=row.finalizing_at,
            completed_at=row.completed_at,
            failed_at=row.failed_at,
            expired_at=row.expired_at,
            cancelling_at=row.cancelling_at,
            cancelled_at=row.cancelled_at,
        )
