"""Stored chat completions (``store: true``): rows per organization, listed, read, re-tagged, deleted, selected.

Rows arrive in batches from the gateway's writer (``serving.stored``), never on the response path. Every query
filters on the organization: another organization's completion is "not found". Metadata filters run in SQL
(``storage.jobs.metadata_is``); lists page by ``seq`` (keyset), as every list here does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.files import Page, keyset_page
from storage.jobs import MAX_METADATA, metadata_is
from storage.tables import StoredCompletion

MAX_PAGE = 100  # OpenAI's largest chat.completions.list / messages.list page


@dataclass(frozen=True)
class Selection:
    """Which stored completions a list, a distillation or an eval's ``stored_completions`` source reads."""

    metadata: dict[str, str]
    model: str | None = None
    created_after: int | None = None  # inclusive bounds, in Unix seconds
    created_before: int | None = None


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str] | None:
    """OpenAI's metadata bounds: at most 16 pairs, keys ≤ 64 and values ≤ 512 characters, strings only."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA
        or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()
        )
    ):
        raise InvalidRequest(
            f"'{param}' must map at most {MAX_METADATA} keys (≤ 64 characters) to strings (≤ 512 characters).",
            param=param,
            code="invalid_value",
        )
    return value


def message_id(completion_id: str, index: int) -> str:
    return f"{completion_id}-{index}"


class StoredCompletions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_many(self, rows: list[StoredCompletion]) -> None:
        with self.db.session() as s:
            s.add_all(rows)

    def _where(self, org_id: str, selection: Selection) -> list[Any]:
        if len(selection.metadata) > MAX_METADATA:
            raise InvalidRequest(f"Filter on at most {MAX_METADATA} metadata pairs.", param="metadata")
        where: list[Any] = [StoredCompletion.organization_id == org_id]
        where += [
            metadata_is(self.db.dialect, col(StoredCompletion.metadata_), k, v) for k, v in selection.metadata.items()
        ]
        if selection.model:
            where.append(StoredCompletion.model == selection.model)
        if selection.created_after is not None:
            where.append(col(StoredCompletion.created_at) >= selection.created_after)
        if selection.created_before is not None:
            where.append(col(StoredCompletion.created_at) <= selection.created_before)
        return where

    def list(
        self, org_id: str, selection: Selection, *, limit: int, after: str | None, ascending: bool
    ) -> Page[StoredCompletion]:
        def missing(after: str) -> InvalidRequest:
            return InvalidRequest(f"after: no such chat completion: {after}", param="after")

        with self.db.session() as s:
            return keyset_page(
                s,
                StoredCompletion,
                self._where(org_id, selection),
                limit=limit,
                after=after,
                ascending=ascending,
                missing=missing,
                anchor_where=[StoredCompletion.organization_id == org_id],
            )

    def select(
        self, org_id: str, selection: Selection, limit: int | None = None, page: int = 200
    ) -> Iterator[StoredCompletion]:
        """Matching completions oldest first, read ``page`` rows at a time (never all at once), at most ``limit``."""
        where, after, left = self._where(org_id, selection), None, limit
        while left is None or left > 0:
            size = page if left is None else min(page, left)
            with self.db.session() as s:
                query = select(StoredCompletion).where(*where)
                if after is not None:
                    query = query.where(col(StoredCompletion.seq) > after)
                rows = list(s.exec(query.order_by(col(StoredCompletion.seq)).limit(size)))
            yield from rows
            if len(rows) < size:
                return
            after = rows[-1].seq
            left = None if left is None else left - len(rows)

    def get(self, org_id: str, completion_id: str) -> StoredCompletion:
        with self.db.session() as s:
            return _mine(s, org_id, completion_id)

    def update_metadata(self, org_id: str, completion_id: str, metadata: dict[str, str] | None) -> StoredCompletion:
        with self.db.session() as s:
            row = _mine(s, org_id, completion_id, lock=True)
            row.metadata_ = metadata
            s.add(row)
        return self.get(org_id, completion_id)

    def delete(self, org_id: str, completion_id: str) -> None:
        with self.db.session() as s:
            s.delete(_mine(s, org_id, completion_id))

    def messages(
        self, org_id: str, completion_id: str, *, limit: int, after: str | None, ascending: bool
    ) -> Page[tuple[str, dict[str, Any]]]:
        """A page of the completion's request messages as (message id, message); ids are ``<completion>-<i>``."""
        messages = list(enumerate(self.get(org_id, completion_id).messages))
        if not ascending:
            messages.reverse()
        start = 0
        if after is not None:
            ids = [message_id(completion_id, i) for i, _ in messages]
            if after not in ids:
                raise InvalidRequest(f"after: no such message in {completion_id}: {after}", param="after")
            start = ids.index(after) + 1
        chosen = messages[start : start + limit]
        return Page([(message_id(completion_id, i), m) for i, m in chosen], start + limit < len(messages))


def _mine(s: Session, org_id: str, completion_id: str, *, lock: bool = False) -> StoredCompletion:
    """The organization's stored completion, or "not found" (also when another organization stored it)."""
    query = select(StoredCompletion).where(
        StoredCompletion.id == completion_id, StoredCompletion.organization_id == org_id
    )
    row = s.exec(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"No chat completion found with id '{completion_id}'.", param="completion_id")
    return row


# --- what other areas read of a stored completion -------------------------------------------------------------------
def answer(row: StoredCompletion) -> dict[str, Any] | None:
    """The first choice's assistant message, or None when the answer has neither text nor tool calls."""
    choices = row.response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out if out["content"] or "tool_calls" in out else None


def training_example(row: StoredCompletion) -> dict[str, Any] | None:
    """A supervised fine-tune example (OpenAI chat format): the request's messages and the stored answer, with the
    request's tools; None when there is no answer to learn from."""
    reply = answer(row)
    if reply is None:
        return None
    example: dict[str, Any] = {"messages": [*row.messages, reply]}
    for key in ("tools", "parallel_tool_calls"):
        if key in row.request:
            example[key] = row.request[key]
    return example


def eval_item(row: StoredCompletion) -> tuple[dict[str, Any], dict[str, Any]]:
    """An eval data-source item of a stored completion, and its stored answer as a sample: ``item.input`` (the
    messages, for ``input_messages.item_reference``), ``item.output_text`` (the stored answer's text, as a reference
    for graders), ``item.metadata``, ``item.model``, ``item.id``."""
    reply = answer(row) or {"role": "assistant", "content": ""}
    item = {
        "id": row.id,
        "model": row.model,
        "created_at": row.created_at,
        "metadata": row.metadata_ or {},
        "input": row.messages,
        "output_text": reply["content"],
        "output": [reply],
    }
    sample = {
        "output_text": reply["content"],
        "input": row.messages,
        "model": row.model,
        "usage": row.response.get("usage"),
    }
    if "tool_calls" in reply:
        sample["output_tools"] = reply["tool_calls"]
    return item, sample


# the data_source_config schema of a ``logs`` / ``stored_completions`` eval: what ``eval_item`` gives
STORED_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "item": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "model": {"type": "string"},
                "created_at": {"type": "integer"},
                "metadata": {"type": "object"},
                "input": {"type": "array"},
                "output_text": {"type": "string"},
                "output": {"type": "array"},
            },
        },
        "sample": {"type": "object", "properties": {"output_text": {"type": "string"}}},
    },
    "required": ["item", "sample"],
}
