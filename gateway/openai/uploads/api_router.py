"""``/v1/uploads`` controllers: parse, call the service, return."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.params import FromPath

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import read_json
from gateway.openai.uploads import serving
from gateway.openai.uploads.protocol import UploadObject, UploadPartObject


class UploadsController(Controller):
    path = "/uploads"
    tags = ["Uploads"]

    @post("/", status_code=200)
    async def create_upload(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> UploadObject:
        """Start an Upload (JSON: filename, purpose, bytes, mime_type, expires_after)."""
        return await serving.create(services, principal, await read_json(request))

    @post("/{upload_id:str}/parts", status_code=200, request_max_body_size=None)
    async def add_upload_part(
        self, request: Request, services: ServicesDep, principal: PrincipalDep, upload_id: FromPath[str]
    ) -> UploadPartObject:
        """Add a Part (multipart: data), at most ``uploads.max_part_bytes``."""
        return await serving.add_part(
            services, principal, upload_id, request.headers.get("content-type", ""), request.stream()
        )

    @post("/{upload_id:str}/complete", status_code=200)
    async def complete_upload(
        self, request: Request, services: ServicesDep, principal: PrincipalDep, upload_id: FromPath[str]
    ) -> UploadObject:
        """Assemble the Parts in the given order (JSON: part_ids, md5) into a File, checked like any upload."""
        return await serving.complete(services, principal, upload_id, await read_json(request))

    @post("/{upload_id:str}/cancel", status_code=200, sync_to_thread=True)
    def cancel_upload(self, services: ServicesDep, principal: PrincipalDep, upload_id: FromPath[str]) -> UploadObject:
        return serving.cancel(services, principal, upload_id)
