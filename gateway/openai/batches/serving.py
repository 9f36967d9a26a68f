"""Batches service: create (the input file checked to exist and be a ``batch`` file, the organization below its
storage quota), retrieve, list, cancel.

The API only records a batch; a worker (``finetune.batches.runner``) validates its lines, runs them and writes the
output and error files.
"""

from __future__ import annotations

from typing import Any

from finetune.batches.lines import ENDPOINTS
from gateway.openai.batches.protocol import BatchObject, CreateBatchRequest
from gateway.openai.common import list_page
from gateway.openai.files.protocol import BATCH_DEFAULT_EXPIRY_S
from gateway.openai.files.serving import check_expiry
from gateway.openai.uploads.protocol import parse
from gateway.services import Services
from storage.accounts import Principal
from storage.batches import BatchStore
from storage.errors import InvalidRequest
from storage.ids import new_id, now
from storage.tables import Batch


def create(services: Services, who: Principal, body: Any) -> BatchObject:
    request = parse(CreateBatchRequest, body)
    if request.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint {request.endpoint!r} is not supported here: use one of {', '.join(ENDPOINTS)}.",
            param="endpoint",
            code="invalid_value",
        )
    windows = services.settings.batches.completion_windows
    if request.completion_window not in windows:
        raise InvalidRequest(
            f"completion_window must be one of {', '.join(windows)}.", param="completion_window", code="invalid_value"
        )
    expiry = BATCH_DEFAULT_EXPIRY_S
    if request.output_expires_after is not None:
        try:
            expiry = check_expiry(request.output_expires_after.seconds)
        except InvalidRequest as exc:
            raise InvalidRequest(
                exc.message.replace("expires_after[seconds]", "output_expires_after.seconds"),
                param="output_expires_after.seconds",
                code="invalid_value",
            ) from None
    file = services.files.get(who.organization_id, request.input_file_id)  # another organization's: not found
    if file.purpose != "batch":
        raise InvalidRequest(
            f"File {file.id} has purpose {file.purpose!r}; a batch's input file must be uploaded with purpose 'batch'.",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    services.quota.check(who.organization_id)  # its output files will count: refused while at or over the quota
    created = now()
    row = Batch(
        id=new_id("batch_"),
        organization_id=who.organization_id,
        api_key_id=who.key_id,
        endpoint=request.endpoint,
        input_file_id=file.id,
        completion_window=request.completion_window,
        metadata_=request.metadata,
        output_expires_after_s=expiry,
        created_at=created,
        expires_at=created + windows[request.completion_window],
    )
    return BatchObject.of(BatchStore(services.db).add(row))


def retrieve(services: Services, who: Principal, batch_id: str) -> BatchObject:
    return BatchObject.of(BatchStore(services.db).get(who.organization_id, batch_id))


def cancel(services: Services, who: Principal, batch_id: str) -> BatchObject:
    return BatchObject.of(BatchStore(services.db).cancel(who.organization_id, batch_id))


def list_batches(services: Services, who: Principal, *, limit: int, after: str | None) -> dict[str, Any]:
    page = BatchStore(services.db).list(who.organization_id, limit=limit, after=after)
    return list_page([BatchObject.of(b) for b in page.items], has_more=page.has_more, ids=True)
