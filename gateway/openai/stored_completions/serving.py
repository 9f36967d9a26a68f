"""Stored chat completions service: list, retrieve, update metadata, delete, messages; distill into a file.

Reads flush this gateway's pending stored completions first (``StoredCompletionWriter.flush``): a completion
answered by this process is visible to the next read; one answered by another gateway within the last second may
not be yet (writes are batched off the response path).

Distillation streams the selected completions (oldest first, a page at a time) as chat-format JSONL into a staged
blob and stores it through ``files.serving.store``, the path of any ``purpose=fine-tune`` upload: the same check,
normalization and 400 naming the problem lines.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.concurrency import sync_to_thread

from gateway.openai.common import list_page
from gateway.openai.files import serving as files
from gateway.openai.files.protocol import FileObject
from gateway.openai.stored_completions.protocol import DistillRequest, completion_object, message_object
from gateway.openai.uploads.protocol import parse
from gateway.services import Services
from storage.accounts import Principal
from storage.blobs import StagedBlob
from storage.errors import InvalidRequest
from storage.files import NewFile
from storage.stored_completions import Selection, StoredCompletions, check_metadata, training_example

_encode = msgspec.json.Encoder().encode


def _store(services: Services) -> StoredCompletions:
    assert services.stored_completions is not None
    return services.stored_completions


async def _flushed(services: Services) -> StoredCompletions:
    if services.completions.stored is not None:
        await services.completions.stored.flush()
    return _store(services)


async def list_completions(
    services: Services,
    who: Principal,
    *,
    model: str | None,
    metadata: dict[str, str],
    after: str | None,
    limit: int,
    ascending: bool,
) -> dict[str, Any]:
    store = await _flushed(services)
    page = await sync_to_thread(
        store.list, who.organization_id, Selection(metadata, model), limit=limit, after=after, ascending=ascending
    )
    return list_page([completion_object(r) for r in page.items], has_more=page.has_more, ids=True)


async def retrieve(services: Services, who: Principal, completion_id: str) -> dict[str, Any]:
    store = await _flushed(services)
    return completion_object(await sync_to_thread(store.get, who.organization_id, completion_id))


async def update(services: Services, who: Principal, completion_id: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or "metadata" not in body:
        raise InvalidRequest(
            "Missing required parameter: 'metadata'.", param="metadata", code="missing_required_parameter"
        )
    metadata = check_metadata(body["metadata"])
    store = await _flushed(services)
    return completion_object(await sync_to_thread(store.update_metadata, who.organization_id, completion_id, metadata))


async def delete(services: Services, who: Principal, completion_id: str) -> dict[str, Any]:
    store = await _flushed(services)
    await sync_to_thread(store.delete, who.organization_id, completion_id)
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


async def messages(
    services: Services, who: Principal, completion_id: str, *, after: str | None, limit: int, ascending: bool
) -> dict[str, Any]:
    store = await _flushed(services)
    page = await sync_to_thread(
        store.messages, who.organization_id, completion_id, limit=limit, after=after, ascending=ascending
    )
    return list_page([message_object(i, m) for i, m in page.items], has_more=page.has_more, ids=True)


async def distill(services: Services, who: Principal, body: Any) -> FileObject:
    request = parse(DistillRequest, body if body is not None else {})
    selection = request.selection()
    filename = files.check_filename(request.filename or "distilled.jsonl", "filename")
    store = await _flushed(services)
    with services.blobs.stage() as staged:
        written = await sync_to_thread(_write_examples, store, who.organization_id, selection, request.limit, staged)
        if not written:
            raise InvalidRequest(
                "No stored chat completion with an answer matches these filters (metadata, model, "
                "created_after, created_before).",
                param="metadata",
                code="no_stored_completions",
            )
        new = NewFile(organization_id=who.organization_id, filename=filename, purpose="fine-tune", original=staged)
        row = await files.store(services, new)
    return FileObject.of(row)


def _write_examples(
    store: StoredCompletions, org_id: str, selection: Selection, limit: int | None, staged: StagedBlob
) -> int:
    """Write one training line per selected completion that has an answer; returns how many."""
    written = 0
    for row in store.select(org_id, selection):
        if limit is not None and written >= limit:
            break
        example = training_example(row)
        if example is not None:
            staged.write(_encode(example) + b"\n")
            written += 1
    return written
