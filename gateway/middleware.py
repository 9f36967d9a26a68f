"""``x-request-id`` on every response; the rate-limit headers and settlement of every /v1 answer.

``x-request-id`` is a ``before_send`` hook rather than a middleware: Litestar runs middleware per route handler, so a
request that matches no route would miss it (it is no /v1 answer either: no rate-limit headers).
"""

from __future__ import annotations

import re
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from serving.proxy import DONE_EVENT

_SAFE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def request_id(scope: Scope) -> str:
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        state["request_id"] = incoming if _SAFE.match(incoming) else f"req_{uuid.uuid4().hex}"
    return state["request_id"]


async def add_request_id(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)["x-request-id"] = request_id(scope)


def rate_limited(app: ASGIApp) -> ASGIApp:
    """Give every answer the ``x-ratelimit-*`` headers of its admission (``gateway.ratelimit``); once the answer is
    over — sent, failed or abandoned by the client — settle its tokens and free its stream slot. A stream is settled
    just before the message that ends it for the client — its ``data: [DONE]`` event (where the openai SDK stops
    reading and hangs up; the proxy has recorded its usage by then) or its last message — so the client never sees
    it end while its slot is still taken."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        limiter = scope["app"].state.services.limiter

        async def send_with_headers(message: Message) -> None:
            admission = scope.get("state", {}).get("rate_limit")
            if message["type"] == "http.response.start":
                if admission is not None:
                    headers = MutableScopeHeaders.from_message(message)
                    for name, value in admission.headers:
                        headers.add(name, value)
            elif message["type"] == "http.response.body" and (
                not message.get("more_body", False) or message.get("body", b"").endswith(DONE_EVENT)
            ):
                await limiter.settle_now(admission)
            await send(message)

        try:
            await app(scope, receive, send_with_headers)
        finally:
            limiter.finish(scope.get("state", {}).get("rate_limit"))

    return middleware
