"""Domain errors. Services raise these; only the gateway's translator renders them.

    TunegateError                 anything tunegate refuses, with message / param / code
    ├── InvalidRequest            the request is malformed or names something unusable   (400)
    │   └── InvalidFile           an uploaded file's content is unusable                 (400)
    ├── AuthenticationFailed      no key, unknown key, revoked key                        (401)
    ├── PermissionDenied          authenticated, but not allowed (e.g. delete a base)     (403)
    │   └── QuotaExceeded         the organization's storage quota is used up             (403)
    ├── NotFound                  no such object *for this organization*                  (404)
    ├── PayloadTooLarge           body over a configured limit                            (413)
    ├── RateLimited               try again later                                         (429)
    ├── UpstreamFailed            an engine failed in a way the caller cannot fix         (500)
    └── Unavailable               a dependency (engine, database) is down or starting     (503)

The HTTP status and OpenAI error ``type`` of each class live in one table at the edge
(``gateway/errors.py``), never here.
"""

from __future__ import annotations


class TunegateError(Exception):
    """Base of every error a client may see. ``param`` names the offending field, ``code`` is stable."""

    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequest(TunegateError):
    pass


class InvalidFile(InvalidRequest):
    default_code = "invalid_file_format"


class AuthenticationFailed(TunegateError):
    default_code = "invalid_api_key"


class PermissionDenied(TunegateError):
    default_code = "permission_denied"


class QuotaExceeded(PermissionDenied):
    default_code = "storage_quota_exceeded"


class NotFound(TunegateError):
    pass


class PayloadTooLarge(TunegateError):
    default_code = "file_too_large"


class RateLimited(TunegateError):
    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UpstreamFailed(TunegateError):
    default_code = "engine_error"


class Unavailable(TunegateError):
    def __init__(self, message: str, *, retry_after: float = 5.0, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
