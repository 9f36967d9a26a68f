"""JSON bodies on every route: bounded in size and nesting before anything parses them.

Python's JSON decoders recurse (msgspec raises ``RecursionError`` near 1 000 levels, which would be a 500), so the
raw bytes are measured first: strings are cut out, everything but brackets dropped, then the innermost ``[]`` /
``{}`` pairs are removed round by round — a body nested ``d`` deep is empty after ``d`` rounds, each a few C-speed
passes. Deeper than ``settings.requests.max_json_depth`` → 400; brackets that never pair up are not JSON → 400
(the decoder would recurse into them too); larger than ``max_body_bytes`` → 413. Multipart bodies (uploads, which
stream to disk and are never parsed as one JSON document) are left alone.

Used as the app's ``before_request`` hook: it runs after routing and guards, before the handler reads its data.
"""

from __future__ import annotations

from litestar import Request

from storage.errors import InvalidRequest, PayloadTooLarge
from storage.json_limits import depth_problem  # shared with the workers that read JSON Lines files
from storage.settings import RequestLimits


def check(raw: bytes, limits: RequestLimits) -> None:
    if len(raw) > limits.max_body_bytes:
        raise _too_large(limits)
    if (problem := depth_problem(raw, limits.max_json_depth)) is not None:
        raise InvalidRequest(f"The request body is not acceptable JSON: {problem}.", code="invalid_json")


async def limit_json_body(request: Request) -> None:
    """``before_request`` hook: a body that is not multipart is held to ``settings.requests``."""
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE") and "content-length" not in request.headers:
        return
    if request.headers.get("content-type", "").startswith("multipart/"):
        return
    limits: RequestLimits = request.app.state.services.settings.requests
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _too_large(limits)
    check(await request.body(), limits)


def _too_large(limits: RequestLimits) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this server's limit of {limits.max_body_bytes} bytes "
        "(settings.requests.max_body_bytes).",
        code="request_too_large",
    )
