"""Responses wire schemas.

The request is checked field by field by ``serving.responses.request.parse`` (shared with callers without HTTP, such
as a batch worker), which names the field of the first problem; the objects answered are built there as plain JSON
(a Response, its items and stream events are open unions in OpenAI's spec) and validated against the spec by
the tests. What is typed here are the small fixed shapes.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class InputTokens(msgspec.Struct):
    object: Literal["response.input_tokens"]
    input_tokens: int


class DeletedResponse(msgspec.Struct):
    id: str
    object: Literal["response"]
    deleted: bool = True


Order = Literal["asc", "desc"]
