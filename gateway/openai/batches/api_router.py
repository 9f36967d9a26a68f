"""``/v1/batches`` controllers: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.concurrency import sync_to_thread
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.batches import serving
from gateway.openai.batches.protocol import BatchObject
from gateway.openai.common import read_json

Limit = Annotated[int, QueryParameter(ge=1, le=100)]


class BatchesController(Controller):
    path = "/batches"
    tags = ["Batch"]

    @post("/", status_code=200)
    async def create_batch(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> BatchObject:
        """Create a batch (JSON: input_file_id, endpoint, completion_window, metadata, output_expires_after)."""
        body = await read_json(request)
        return await sync_to_thread(serving.create, services, principal, body)

    @get("/", sync_to_thread=True)
    def list_batches(
        self, services: ServicesDep, principal: PrincipalDep, limit: Limit = 20, after: FromQuery[str | None] = None
    ) -> dict[str, Any]:
        return serving.list_batches(services, principal, limit=limit, after=after)

    @get("/{batch_id:str}", sync_to_thread=True)
    def retrieve_batch(self, services: ServicesDep, principal: PrincipalDep, batch_id: FromPath[str]) -> BatchObject:
        return serving.retrieve(services, principal, batch_id)

    @post("/{batch_id:str}/cancel", status_code=200, sync_to_thread=True)
    def cancel_batch(self, services: ServicesDep, principal: PrincipalDep, batch_id: FromPath[str]) -> BatchObject:
        return serving.cancel(services, principal, batch_id)
