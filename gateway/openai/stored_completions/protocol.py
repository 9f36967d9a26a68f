"""Stored chat completion wire objects (``chat.completion`` with its metadata, ``chat.completion.deleted``, the
messages of ``ChatCompletionMessageList``) and the distillation request (a tunegate extension)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from serving.stored import ECHOED
from storage.stored_completions import Selection, check_metadata
from storage.tables import StoredCompletion


def completion_object(row: StoredCompletion) -> dict[str, Any]:
    """The completion as it was answered, with its current ``metadata`` and the request fields OpenAI echoes."""
    echoed = {k: row.request[k] for k in ECHOED if k in row.request}
    return {**echoed, **row.response, "object": "chat.completion", "metadata": row.metadata_ or {}}


def message_object(message_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """One request message: ``content`` as text, ``content_parts`` when the caller sent parts."""
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    if parts is not None:
        content = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
    out = {
        "id": message_id,
        "role": message["role"],
        "content": content,
        "refusal": message.get("refusal"),
        "name": message.get("name"),
        "content_parts": parts,
    }
    for key in ("tool_calls", "tool_call_id"):
        if key in message:
            out[key] = message[key]
    return out


class DistillRequest(BaseModel):
    """``POST /v1/chat/completions/distill``: which stored completions become a fine-tune file, and its name."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, StrictStr] = Field(default_factory=dict)
    model: StrictStr | None = None
    created_after: StrictInt | None = None
    created_before: StrictInt | None = None
    limit: StrictInt | None = Field(default=None, ge=1)
    filename: StrictStr | None = None

    def selection(self) -> Selection:
        check_metadata(self.metadata)
        return Selection(self.metadata, self.model, self.created_after, self.created_before)
