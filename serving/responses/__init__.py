"""The Responses API (``/v1/responses``) translated onto chat completions, through the same proxy as chat.

Why translate rather than forward to vLLM's own ``/v1/responses``: every model tunegate serves must answer it —
base, ``ft:`` and checkpoint adapters, and GGUF models on llama.cpp's server, which has no Responses endpoint —
and the chat path already has what a forwarded body needs (the ``serving.request_body`` allow-list, adapter
resolution and hot-load, ``<think>`` splitting, usage, the stream relay that aborts the engine's request when
the client leaves). vLLM's own endpoint also changes shape between versions. So a Responses request becomes a
chat body (``to_chat``: instructions → a system message, items → messages, function tools and ``tool_choice``,
``text.format`` → ``response_format`` for structured outputs, ``max_output_tokens`` → ``max_tokens``), which is
then checked by the allow-list like a caller's chat body, and the answer becomes a Response (``from_chat``) or,
streamed, the Responses event sequence (``EventStream``).

The modules, each importing only those above it:

- ``items``: input items checked and normalized to stored-item shape;
- ``request``: the request checked field by field (``parse`` → ``ResponsesRequest``);
- ``chat``: the request as a chat body (``to_chat``, ``chat_request``), the allow-list's 400s renamed;
- ``output``: a chat completion as a Response (``skeleton``, ``from_chat``);
- ``events``: a streamed chat completion as Responses events (``EventStream``);
- ``service``: ``ResponsesService`` — storing, ``previous_response_id`` chains, background responses, cancel.

The names below are re-exported for ``serving.responses.parse``-style callers (the batch worker's lines).
"""

from serving.responses.chat import chat_request
from serving.responses.output import from_chat, skeleton
from serving.responses.request import ResponsesRequest, parse
from serving.responses.service import ResponsesService

__all__ = ["ResponsesRequest", "ResponsesService", "chat_request", "from_chat", "parse", "skeleton"]
