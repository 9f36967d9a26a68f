"""The Responses API (``/v1/responses``) translated onto chat completions; see ``service`` for the parts."""

from serving.responses.service import (
    EventStream,
    ResponsesRequest,
    ResponsesService,
    chat_request,
    from_chat,
    parse,
    skeleton,
    to_chat,
)

__all__ = [
    "EventStream",
    "ResponsesRequest",
    "ResponsesService",
    "chat_request",
    "from_chat",
    "parse",
    "skeleton",
    "to_chat",
]
