"""``/v1/chat/completions`` and ``/v1/completions``: parse, hand to the serving proxy (which checks the body against
its allow-list, ``serving.request_body``), answer JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
from litestar import Controller, Request, Response, post
from litestar.response import Stream

from gateway.auth import PrincipalDep, ServicesDep
from gateway.openai.common import read_json
from serving.request_body import Endpoint

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class CompletionsController(Controller):
    path = "/"
    tags = ["Chat"]

    @post("/chat/completions", status_code=200)
    async def create_chat_completion(
        self, request: Request, services: ServicesDep, principal: PrincipalDep
    ) -> Response[Any]:
        return await _complete(request, services, principal, "chat.completions")

    @post("/completions", status_code=200)
    async def create_completion(
        self, request: Request, services: ServicesDep, principal: PrincipalDep
    ) -> Response[Any]:
        return await _complete(request, services, principal, "completions")


async def _complete(
    request: Request, services: ServicesDep, principal: PrincipalDep, endpoint: Endpoint
) -> Response[Any]:
    result = await services.completions.create(principal, endpoint, await read_json(request), joined=True)
    if isinstance(result, bytes):
        return Response(content=result, media_type="application/json")
    return Stream(_closing(result), media_type="text/event-stream", headers=SSE_HEADERS)


async def _closing(events: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """Relay the events; when the client goes away mid-stream, close the upstream request at once."""
    try:
        async for event in events:
            yield event
    finally:
        with anyio.CancelScope(shield=True):  # runs while the client's departure cancels the response
            await events.aclose()
