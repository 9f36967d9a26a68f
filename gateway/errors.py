"""The one error translator: domain errors and framework errors → the OpenAI envelope.

Every error a client sees is ``{"error": {"message", "type", "param", "code"}}``; Litestar's own
``{"status_code", "detail"}`` never leaves the process.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.types import ExceptionHandlersMap

from storage.db import TRANSIENT_DB_ERRORS, is_transient
from storage.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    TunegateError,
    Unavailable,
    UpstreamFailed,
)

log = logging.getLogger("tunegate.gateway")

# domain error class → (HTTP status, OpenAI error type); looked up along the MRO, most specific first.
STATUS: dict[type[TunegateError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    AuthenticationFailed: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    NotFound: (404, "invalid_request_error"),
    PayloadTooLarge: (413, "invalid_request_error"),
    RateLimited: (429, "rate_limit_error"),
    UpstreamFailed: (500, "server_error"),
    Unavailable: (503, "service_unavailable_error"),
    TunegateError: (400, "invalid_request_error"),
}

_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def status_of(exc: TunegateError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise AssertionError("unreachable: TunegateError is in STATUS")


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _respond(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(content=body, status_code=status, headers=headers, media_type="application/json")


def on_domain_error(_: Request, exc: TunegateError) -> Response[Any]:
    status, type_ = status_of(exc)
    headers = {}
    if isinstance(exc, (RateLimited, Unavailable)):
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return _respond(status, envelope(exc.message, type_, exc.param, exc.code), headers)


def on_http_error(request: Request, exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, NotFoundException) and exc.detail in ("Not Found", ""):
        return _respond(
            404,
            envelope(
                f"Invalid URL ({request.method} {request.url.path})", "invalid_request_error", None, "unknown_url"
            ),
        )
    if isinstance(exc, ValidationException):
        param, message = _validation_detail(exc)
        return _respond(400, envelope(message, "invalid_request_error", param, "invalid_value"))
    if status == 405:
        return _respond(
            405,
            envelope(
                f"Method {request.method} is not allowed on {request.url.path}",
                "invalid_request_error",
                None,
                "method_not_allowed",
            ),
        )
    if status >= 500:
        log.error("HTTP %s on %s %s: %s", status, request.method, request.url.path, exc.detail)
        return _respond(status, envelope("The server had an error while processing your request.", "server_error"))
    return _respond(
        status, envelope(str(exc.detail), _HTTP_TYPES.get(status, "invalid_request_error")), dict(exc.headers or {})
    )


DATABASE_RETRY_AFTER_S = 2


def on_database_error(request: Request, exc: Exception) -> Response[Any]:
    """The database cannot be reached (restarting, network blip, pool exhausted, SQLite busy past its timeout): a
    503 the openai client retries on its own, never a 500. The pool pre-pings, so the next request after the
    database is back reconnects without a gateway restart. The same exception classes raised by a bug are 500s."""
    if not is_transient(exc):
        return on_unexpected(request, exc)
    services = getattr(request.app.state, "services", None)
    if services is not None:  # cached keys must not outlive the outage's first sign (storage.accounts.KeyCache)
        services.accounts.keys.clear()
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, str(exc).splitlines()[0][:300])
    return _respond(
        503,
        envelope(
            "The database is temporarily unavailable; retry shortly.",
            "service_unavailable_error",
            None,
            "database_unavailable",
        ),
        {"retry-after": str(DATABASE_RETRY_AFTER_S)},
    )


def on_unexpected(request: Request, exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(500, envelope("The server had an error while processing your request.", "server_error"))


def _validation_detail(exc: ValidationException) -> tuple[str | None, str]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict):
        first = extra[0]
        param = first.get("key")
        return param, f"Invalid value for '{param}': {first.get('message', 'invalid')}." if param else str(
            first.get("message")
        )
    return None, str(exc.detail)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    TunegateError: on_domain_error,
    HTTPException: on_http_error,
    **{error: on_database_error for error in TRANSIENT_DB_ERRORS},
    Exception: on_unexpected,
}
