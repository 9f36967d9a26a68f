"""Stored chat completion controllers (``GET/POST/DELETE /v1/chat/completions/…``) and the distillation route.

``POST /v1/chat/completions`` itself (create) lives in ``gateway/openai/chat``; Litestar merges the methods of one
path, and the static ``/distill`` segment wins over ``{completion_id}``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import read_json
from gateway.openai.files.protocol import FileObject
from gateway.openai.stored_completions import serving
from storage.stored_completions import MAX_PAGE

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]
Order = Literal["asc", "desc"]


def _metadata(request: Request) -> dict[str, str]:
    return {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}


class StoredCompletionsController(Controller):
    path = "/chat/completions"
    tags = ["Chat"]

    @get("/")
    async def list_chat_completions(
        self,
        request: Request,
        services: ServicesDep,
        principal: PrincipalDep,
        model: FromQuery[str | None] = None,
        after: FromQuery[str | None] = None,
        limit: Limit = 20,
        order: Order = "asc",
    ) -> dict[str, Any]:
        """Stored completions (``metadata[k]=v`` and ``model`` filters), oldest first unless ``order=desc``."""
        return await serving.list_completions(
            services,
            principal,
            model=model,
            metadata=_metadata(request),
            after=after,
            limit=limit,
            ascending=order == "asc",
        )

    @post("/distill", status_code=200)
    async def distill(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> FileObject:
        """tunegate extension: the stored completions matching metadata/model/created_after/created_before (at
        most ``limit``) as a ``purpose=fine-tune`` chat-format file."""
        return await serving.distill(services, principal, await read_json(request))

    @get("/{completion_id:str}")
    async def get_chat_completion(
        self, services: ServicesDep, principal: PrincipalDep, completion_id: FromPath[str]
    ) -> dict[str, Any]:
        return await serving.retrieve(services, principal, completion_id)

    @post("/{completion_id:str}", status_code=200)
    async def update_chat_completion(
        self, request: Request, services: ServicesDep, principal: PrincipalDep, completion_id: FromPath[str]
    ) -> dict[str, Any]:
        """Replace the completion's ``metadata`` (JSON: metadata)."""
        return await serving.update(services, principal, completion_id, await read_json(request))

    @delete("/{completion_id:str}", status_code=200)
    async def delete_chat_completion(
        self, services: ServicesDep, principal: PrincipalDep, completion_id: FromPath[str]
    ) -> dict[str, Any]:
        return await serving.delete(services, principal, completion_id)

    @get("/{completion_id:str}/messages")
    async def get_chat_completion_messages(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        completion_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: Limit = 20,
        order: Order = "asc",
    ) -> dict[str, Any]:
        return await serving.messages(
            services, principal, completion_id, after=after, limit=limit, ascending=order == "asc"
        )
