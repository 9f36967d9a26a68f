"""``/v1/files`` controllers: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream

from gateway.auth import PrincipalDep, ServicesDep
from gateway.errors import envelope
from gateway.openai.common import DeletedObject
from gateway.openai.files import serving
from gateway.openai.files.protocol import FileObject
from storage.files import MAX_PAGE


class FilesController(Controller):
    path = "/files"
    tags = ["Files"]

    @post("/", status_code=200, request_max_body_size=None)
    async def create_file(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> FileObject:
        """Upload a file (multipart: file, purpose, expires_after[anchor], expires_after[seconds])."""
        return await serving.create(services, principal, request.headers.get("content-type", ""), request.stream())

    @get("/", sync_to_thread=True)
    def list_files(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        purpose: FromQuery[str | None] = None,
        order: FromQuery[Literal["asc", "desc"]] = "desc",
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = MAX_PAGE,
        after: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        return serving.list_files(services, principal, purpose=purpose, order=order, limit=limit, after=after)

    @get("/{file_id:str}", sync_to_thread=True)
    def retrieve_file(self, services: ServicesDep, principal: PrincipalDep, file_id: FromPath[str]) -> FileObject:
        return serving.retrieve(services, principal, file_id)

    @delete("/{file_id:str}", status_code=200, sync_to_thread=True)
    def delete_file(self, services: ServicesDep, principal: PrincipalDep, file_id: FromPath[str]) -> DeletedObject:
        serving.delete(services, principal, file_id)
        return DeletedObject(id=file_id, object="file")

    @get("/{file_id:str}/content", sync_to_thread=True)
    def file_content(
        self,
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        file_id: FromPath[str],
        format: FromQuery[Literal["original", "normalized"]] = "original",  # noqa: A002 - the query parameter's name
    ) -> Stream | Response:
        """The bytes as uploaded; ``?format=normalized`` gives a fine-tune file as OpenAI JSONL. ``Range: bytes=…``
        gives one range (206)."""
        try:
            chunks, status, headers = serving.content(
                services, principal, file_id, normalized=format == "normalized", byte_range=request.headers.get("range")
            )
        except serving.RangeNotSatisfiable as exc:
            return Response(
                envelope(str(exc), "invalid_request_error", "range", "range_not_satisfiable"),
                status_code=416,
                headers={"content-range": f"bytes */{exc.size}"},
            )
        return Stream(chunks, media_type="application/octet-stream", status_code=status, headers=headers)
