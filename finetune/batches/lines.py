"""A batch file's lines in and out, in OpenAI's formats.

Input, one request per line: ``{"custom_id": str, "method": "POST", "url": <the batch's endpoint>, "body": {...}}``.
Output and error files, one result per line: ``{"id": "batch_req_…", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`` — a request the engine (or tunegate's checks) answered carries its ``response``
(2xx lines go to the output file, others to the error file, with the endpoint's own error body); a line that
never became a request (not JSON, no custom_id, wrong url, a custom_id seen before, expired before it was sent)
has ``response: null`` and ``error: {code, message}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

from serving.request_body import Endpoint
from storage.ids import new_id
from storage.json_limits import capped_lines, depth_problem
from storage.settings import RequestLimits
from storage.tables import BatchLine

# the batch endpoint → the allow-list endpoint of serving.request_body
ENDPOINTS: dict[str, Endpoint | Literal["responses"]] = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
}
MAX_CUSTOM_ID = 512
MAX_MODEL = 512  # Batch.model's column: a longer model is still a line (a 404), never the batch's model


@dataclass(frozen=True)
class Request:
    line: int  # 1-based line number in the input file
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Problem:
    line: int
    custom_id: str | None
    code: str
    message: str


def read(fh: IO[bytes], limits: RequestLimits) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw line) of every non-blank line, streamed; None for a line over ``limits.max_body_bytes``
    (the API's own cap on a body), skipped without being read whole."""
    return capped_lines(fh, limits.max_body_bytes)


def parse(number: int, raw: bytes | None, endpoint: str, limits: RequestLimits) -> Request | Problem:
    """The line's request, or why it is none. Never raises: a bad line is an error line, never a failed batch."""
    if raw is None:
        return Problem(
            number,
            None,
            "line_too_large",
            f"Line {number} is larger than {limits.max_body_bytes} bytes (settings.requests.max_body_bytes).",
        )
    # the line wraps the body in one object: one level more than a request body may have
    if (problem := depth_problem(raw, limits.max_json_depth + 1)) is not None:
        return Problem(number, None, "invalid_json", f"Line {number} is not acceptable JSON: {problem}.")
    try:
        row = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        return Problem(number, None, "invalid_json", f"Line {number} is not valid JSON: {exc}.")
    if not isinstance(row, dict):
        return Problem(number, None, "invalid_request", f"Line {number} must be a JSON object.")
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return Problem(
            number,
            None,
            "missing_custom_id",
            f"Line {number}: 'custom_id' must be a non-empty string of at most {MAX_CUSTOM_ID} characters.",
        )
    if row.get("method") != "POST":
        return Problem(number, custom_id, "invalid_method", f"Line {number}: 'method' must be 'POST'.")
    if row.get("url") != endpoint:
        return Problem(
            number,
            custom_id,
            "mismatched_url",
            f"Line {number}: 'url' is {row.get('url')!r}, but this batch's endpoint is {endpoint!r}.",
        )
    body = row.get("body")
    if not isinstance(body, dict):
        return Problem(number, custom_id, "invalid_body", f"Line {number}: 'body' must be a JSON object.")
    if body.get("stream") is True:
        return Problem(number, custom_id, "invalid_body", f"Line {number}: 'body.stream' is not supported in a batch.")
    return Request(number, custom_id, body)


def answered(request: Request, batch_id: str, status: int, request_id: str, body: dict[str, Any]) -> BatchLine:
    """An output (2xx) or error-file line for a request that got an answer."""
    result = {
        "id": new_id("batch_req_"),
        "custom_id": request.custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return BatchLine(batch_id=batch_id, line=request.line, ok=200 <= status < 300, result=_dump(result))


def unanswered(problem: Problem, batch_id: str) -> BatchLine:
    """An error-file line for a line that never became a request."""
    result = {
        "id": new_id("batch_req_"),
        "custom_id": problem.custom_id,
        "response": None,
        "error": {"code": problem.code, "message": problem.message},
    }
    return BatchLine(batch_id=batch_id, line=problem.line, ok=False, result=_dump(result))


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
