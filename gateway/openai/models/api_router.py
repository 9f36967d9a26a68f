"""``/v1/models`` controllers. Ids may hold '/' and ':' (``{model:path}``, leading '/' stripped)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get
from litestar.concurrency import sync_to_thread
from litestar.params import FromPath

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import DeletedObject, list_page
from gateway.openai.models.protocol import ModelObject


class ModelsController(Controller):
    path = "/models"
    tags = ["Models"]

    @get("/", sync_to_thread=True)
    def list_models(self, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
        return list_page([ModelObject.of(m) for m in services.catalog.list(principal.organization_id)])

    @get("/{model:path}", sync_to_thread=True)
    def retrieve_model(self, services: ServicesDep, principal: PrincipalDep, model: FromPath[str]) -> ModelObject:
        return ModelObject.of(services.catalog.get(principal.organization_id, model.lstrip("/")))

    @delete("/{model:path}", status_code=200)
    async def delete_model(self, services: ServicesDep, principal: PrincipalDep, model: FromPath[str]) -> DeletedObject:
        """Deleted for good: unloaded from every engine; later requests get 404 model_not_found."""
        model_id = model.lstrip("/")
        entry = await sync_to_thread(services.catalog.delete, principal.organization_id, model_id)
        await services.engines.forget(entry)
        return DeletedObject(id=model_id, object="model")
