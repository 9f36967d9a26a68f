"""``/v1/responses`` controllers: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, FromQuery, QueryParameter

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import read_json
from gateway.openai.responses import serving
from gateway.openai.responses.protocol import DeletedResponse, InputTokens, Order
from storage.errors import InvalidRequest


class ResponsesController(Controller):
    path = "/responses"
    tags = ["Responses"]

    @post("/", status_code=200)
    async def create_response(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> Response[Any]:
        """Create a model response (JSON, or the Responses event stream with ``stream: true``). A background one
        keeps this request's rate-limit admission (token estimate, stream slot) until its generation ends."""
        limits = await services.limiter.limits_of(principal.organization_id)
        admission = request.scope.get("state", {}).get("rate_limit")
        return serving.answer(
            await serving.service(services).respond(
                principal,
                await read_json(request),
                background_cap=limits.background_responses,
                hold=lambda: services.limiter.hold(admission),
            )
        )

    @post("/input_tokens", status_code=200)
    async def count_input_tokens(self, request: Request, services: ServicesDep, principal: PrincipalDep) -> InputTokens:
        counted = await serving.service(services).input_tokens(principal, await read_json(request))
        return InputTokens(object="response.input_tokens", input_tokens=counted["input_tokens"])

    @get("/{response_id:str}")
    async def get_response(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        response_id: FromPath[str],
        stream: FromQuery[bool | None] = None,
    ) -> Response[Any]:
        if stream:
            raise InvalidRequest(
                "Streaming a stored response again is not supported by this server.",
                param="stream",
                code="unsupported_parameter",
            )
        return serving.answer(await serving.service(services).retrieve(principal, response_id))

    @delete("/{response_id:str}", status_code=200)
    async def delete_response(
        self, services: ServicesDep, principal: PrincipalDep, response_id: FromPath[str]
    ) -> DeletedResponse:
        await serving.service(services).delete(principal, response_id)
        return DeletedResponse(id=response_id, object="response")

    @post("/{response_id:str}/cancel", status_code=200)
    async def cancel_response(
        self, services: ServicesDep, principal: PrincipalDep, response_id: FromPath[str]
    ) -> Response[Any]:
        """Cancel a background response (one created with ``background: true``)."""
        return serving.answer(await serving.service(services).cancel(principal, response_id))

    @get("/{response_id:str}/input_items")
    async def list_input_items(
        self,
        services: ServicesDep,
        principal: PrincipalDep,
        response_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        after: FromQuery[str | None] = None,
        order: FromQuery[Order] = "desc",
    ) -> Response[Any]:
        return serving.answer(
            await serving.service(services).input_items(principal, response_id, limit=limit, after=after, order=order)
        )
