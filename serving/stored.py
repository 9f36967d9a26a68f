"""``store: true`` on chat completions: what the proxy keeps of a request and its answer, and the writer that
stores it off the response path.

``capture`` reads ``store`` and ``metadata`` from the caller's body (accepted by the allow-list, never forwarded)
before anything is sent to an engine, so a bad value is a 400 naming it. A ``Capture`` takes the rewritten answer
(the caller's model and id, as the caller saw it) — whole, or chunk by chunk for a stream, folded into one
``chat.completion`` — and queues one row with the ``StoredCompletionWriter``, which writes a batch a second
(``serving.usage.BatchedWriter``). A stream that ends early (the client left, the engine broke) is not stored.
What waits for the database is bounded in bytes; the row's strings are bounded by the request's own caps
(``settings.requests.max_body_bytes`` for the messages, ``max_tokens`` for the answer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec

from serving.request_body import EngineRequest
from serving.usage import BatchedWriter
from storage.accounts import Principal
from storage.errors import InvalidRequest
from storage.ids import now
from storage.stored_completions import StoredCompletions, check_metadata
from storage.tables import StoredCompletion

log = logging.getLogger("tunegate.serving")
MAX_PENDING_BYTES = 256 * 1024 * 1024  # stored completions held while the database is away
# request fields echoed on a stored completion (OpenAI's stored objects carry them); the rest stays in ``request``
ECHOED = (
    "temperature",
    "top_p",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
)
_encode = msgspec.json.Encoder().encode


def capture(principal: Principal, body: dict[str, Any], request: EngineRequest) -> Capture | None:
    """What to store of this request, or None when ``store`` is false or absent (OpenAI's default for chat)."""
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise InvalidRequest("'store' must be a boolean.", param="store", code="invalid_type")
    metadata = check_metadata(body.get("metadata"))
    if not store or request.endpoint != "chat.completions":
        return None
    return Capture(principal.organization_id, request, metadata)


@dataclass
class Capture:
    organization_id: str
    request: EngineRequest
    metadata: dict[str, str] | None
    created: int = field(default_factory=now)
    head: dict[str, Any] = field(default_factory=dict)  # a stream's id, model, created, system_fingerprint
    choices: dict[int, dict[str, Any]] = field(default_factory=dict)
    texts: dict[tuple[int, str], list[str]] = field(default_factory=dict)  # streamed text pieces, joined at the end
    usage: dict[str, Any] | None = None

    def row(self, completion: dict[str, Any]) -> StoredCompletion:
        completion = {**completion, "object": "chat.completion"}
        return StoredCompletion(
            id=completion["id"],
            organization_id=self.organization_id,
            model=completion["model"],
            created_at=completion.get("created") or self.created,
            metadata_=self.metadata,
            messages=list(self.request.source),
            request=dict(self.request.params),
            response=completion,
        )

    # --- a stream, chunk by chunk ------------------------------------------------------------------------------
    def feed(self, chunk: dict[str, Any]) -> None:
        """Fold one rewritten chunk (as the caller gets it) into the completion."""
        if "error" in chunk:
            return
        for key in ("id", "model", "created", "system_fingerprint"):
            if chunk.get(key) is not None:
                self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._fold(choice)

    def _fold(self, choice: dict[str, Any]) -> None:
        into = self.choices.setdefault(
            choice.get("index", 0),
            {
                "index": choice.get("index", 0),
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            },
        )
        message, delta = into["message"], choice.get("delta") or {}
        for key in ("content", "reasoning_content", "refusal"):
            if delta.get(key):
                self.texts.setdefault((into["index"], key), []).append(delta[key])
        for call in delta.get("tool_calls") or ():
            calls = message.setdefault("tool_calls", [])
            while len(calls) <= call.get("index", 0):
                calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            into_call, function = calls[call.get("index", 0)], call.get("function") or {}
            into_call["id"] = call.get("id") or into_call["id"]
            into_call["function"]["name"] += function.get("name") or ""
            into_call["function"]["arguments"] += function.get("arguments") or ""
        if (logprobs := choice.get("logprobs")) and logprobs.get("content"):
            into["logprobs"] = into["logprobs"] or {"content": [], "refusal": None}
            into["logprobs"]["content"] += logprobs["content"]
        if choice.get("finish_reason") is not None:
            into["finish_reason"] = choice["finish_reason"]

    def streamed(self) -> dict[str, Any]:
        """The stream folded into one ``chat.completion``."""
        for (index, key), pieces in self.texts.items():
            self.choices[index]["message"][key] = "".join(pieces)
        completion = {
            "id": self.head.get("id"),
            "object": "chat.completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": [self.choices[i] for i in sorted(self.choices)],
        }
        if self.head.get("system_fingerprint"):
            completion["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion


class StoredCompletionWriter(BatchedWriter[StoredCompletion]):
    """Stored completions, written a batch a second; at most ``MAX_PENDING_BYTES`` wait for the database."""

    what = "stored completions"

    def __init__(
        self, store: StoredCompletions, interval: float = 1.0, max_pending_bytes: int = MAX_PENDING_BYTES
    ) -> None:
        super().__init__(store, interval, max_pending_bytes)

    def size(self, row: StoredCompletion) -> int:
        return len(_encode(row.messages)) + len(_encode(row.response)) + 512

    def describe(self, row: StoredCompletion) -> Any:
        return {"id": row.id, "organization_id": row.organization_id, "model": row.model}
