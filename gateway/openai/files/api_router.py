"""``/v1/files`` controllers: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from litestar.response import Stream

from gateway.openai.common import DeletedObject
from gateway.openai.files import serving
from gateway.openai.files.protocol import FileObject
from gateway.services import Services
from storage.accounts import Principal


class FilesController(Controller):
    path = "/files"
    tags = ["Files"]

    @post("/", status_code=200, request_max_body_size=None)
    async def create_file(self, request: Request, services: Services, principal: Principal) -> FileObject:
        """Upload a file (multipart: file, purpose, expires_after[anchor], expires_after[seconds])."""
        return await serving.create(services, principal, request.headers.get("content-type", ""), request.stream())

    @get("/", sync_to_thread=True)
    def list_files(
        self, services: Services, principal: Principal, purpose: str | None = None,
        order: Literal["asc", "desc"] = "desc", limit: Annotated[int, Parameter(ge=1, le=10000)] = 10000,
        after: str | None = None,
    ) -> dict[str, Any]:
        return serving.list_files(services, principal, purpose=purpose, order=order, limit=limit, after=after)

    @get("/{file_id:str}", sync_to_thread=True)
    def retrieve_file(self, services: Services, principal: Principal, file_id: str) -> FileObject:
        return serving.retrieve(services, principal, file_id)

    @delete("/{file_id:str}", status_code=200, sync_to_thread=True)
    def delete_file(self, services: Services, principal: Principal, file_id: str) -> DeletedObject:
        serving.delete(services, principal, file_id)
        return DeletedObject(id=file_id, object="file")

    @get("/{file_id:str}/content", sync_to_thread=True)
    def file_content(
        self, services: Services, principal: Principal, file_id: str,
        format: Literal["original", "normalized"] = "original",  # noqa: A002 - the query parameter's name
    ) -> Stream:
        """The bytes as uploaded; ``?format=normalized`` gives a fine-tune file as OpenAI JSONL."""
        chunks = serving.content(services, principal, file_id, normalized=format == "normalized")
        return Stream(chunks, media_type="application/octet-stream")
