"""``/v1/exports``: turn a model into files for the edge (GGUF + Modelfile, GGUF adapter, merged safetensors).

An export is an async job: create it, poll it (``status``, ``progress``, ``stage``), then download each of its
``output_files`` through ``/v1/files/{id}/content``.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.concurrency import sync_to_thread
from litestar.params import FromPath, FromQuery, QueryParameter

from finetune.export.submit import new_export
from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import list_page, read_json
from gateway.openai.exports.protocol import export_object

Limit = Annotated[int, QueryParameter(ge=1, le=100)]


class ExportsController(Controller):
    path = "/exports"
    tags = ["Exports"]

    @post("/", status_code=200)
    async def create_export(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
        body = await read_json(request)

        def create() -> Any:
            services.quota.check(principal.organization_id)
            row = new_export(
                principal.organization_id,
                body,
                services.catalog.get_own,
                services.blobs.local_path,
                services.settings.base_models,
            )
            return services.exports.add(row)

        return export_object(await sync_to_thread(create))

    @get("/", sync_to_thread=True)
    def list_exports(
        self, services: ServicesDep, principal: PrincipalDep, limit: Limit = 20, after: FromQuery[str | None] = None
    ) -> dict[str, Any]:
        page = services.exports.list(principal.organization_id, limit=limit, after=after)
        return list_page([export_object(e) for e in page.items], has_more=page.has_more, ids=True)

    @get("/{export_id:str}", sync_to_thread=True)
    def retrieve_export(
        self, services: ServicesDep, principal: PrincipalDep, export_id: FromPath[str]
    ) -> dict[str, Any]:
        return export_object(services.exports.get(principal.organization_id, export_id))

    @post("/{export_id:str}/cancel", status_code=200, sync_to_thread=True)
    def cancel_export(self, services: ServicesDep, principal: PrincipalDep, export_id: FromPath[str]) -> dict[str, Any]:
        return export_object(services.exports.cancel(principal.organization_id, export_id))
