"""``x-request-id`` on every response — router 404/405s and errors included: the caller's, or a new one.

A ``before_send`` hook rather than a middleware: Litestar runs middleware per route handler, so a
request that matches no route would miss it.
"""

from __future__ import annotations

import re
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

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
