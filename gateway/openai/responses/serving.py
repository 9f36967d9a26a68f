"""Responses controllers' glue: the gateway's ``ResponsesService`` and the answer's shape (JSON, or SSE relayed
like chat's: a client that leaves closes the engine request at once)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from litestar import Response
from litestar.response import Stream

from gateway.openai.chat.api_router import SSE_HEADERS, _closing
from gateway.services import Services
from serving.responses.service import ResponsesService
from storage.errors import Unavailable


def service(services: Services) -> ResponsesService:
    if services.responses is None:
        raise Unavailable("The Responses API is not configured in this process.")
    return services.responses


def answer(result: dict[str, Any] | AsyncGenerator[bytes, None]) -> Response[Any]:
    if isinstance(result, dict):
        return Response(content=msgspec.json.encode(result), media_type="application/json")
    return Stream(_closing(result), media_type="text/event-stream", headers=SSE_HEADERS)
