"""Stored responses (``/v1/responses`` with ``store`` true): the Response object, its input items, its chain.

Every read filters on the organization: another organization's response is "not found", as is a deleted one. A
response's own input items are rows of their own (``input_items.list`` pages over them); a conversation continued
with ``previous_response_id`` is rebuilt by walking the chain back: each ancestor's input items, then its output.
Background responses are written when created (``queued``) and finished with a conditional update, so a
``cancel`` that lands first wins over the generation's end. The process running one holds a lease on it (``renew``,
kept in the stored body under ``_lease``, never shown): a response whose lease lapsed — its gateway stopped, crashed
or restarted — reads as ``failed`` (``server_error``, "the gateway restarted") everywhere, instead of staying
``in_progress`` forever. An organization has at most ``cap`` active ones (``add_background``).

A ``previous_response_id`` chain is sized in SQL (the stored JSON's length) before anything is loaded: above
``max_bytes`` it is a 400 naming ``previous_response_id``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import String, cast, func
from sqlmodel import Session, col, delete, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound, RateLimited
from storage.tables import Organization, ResponseInputItem, StoredResponse

MAX_CHAIN = 256  # previous_response_id links followed at most
MAX_CONVERSATION_BYTES = 16 * 1024 * 1024  # stored JSON a previous_response_id chain may load (default)
ACTIVE = ("queued", "in_progress")
LEASE = "_lease"  # the body key of a background response's lease (a time.time() deadline)
RESTARTED = {
    "code": "server_error",
    "message": "The gateway restarted while this background response was running: it did not finish. Create it again.",
}


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, org_id: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Store a Response object (its ``id``, ``status`` …) with its own input items (each with an ``id``)."""
        with self.db.session() as s:
            _add(s, org_id, response, items)

    def add_background(
        self, org_id: str, response: dict[str, Any], items: list[dict[str, Any]], *, cap: int | None, lease_s: float
    ) -> None:
        """Store a queued background response under a lease of ``lease_s``; 429 when the organization already has
        ``cap`` queued or in-progress ones (counted under a lock on the organization's row on Postgres)."""
        with self.db.session() as s:
            if cap is not None:
                s.exec(select(Organization.id).where(Organization.id == org_id).with_for_update()).first()
                active = [
                    r
                    for r in s.exec(
                        select(StoredResponse).where(
                            StoredResponse.organization_id == org_id, col(StoredResponse.status).in_(ACTIVE)
                        )
                    )
                    if not _lapsed(s, r)
                ]
                if len(active) >= cap:
                    raise RateLimited(
                        f"Too many background responses queued or in progress for organization "
                        f"{org_id}: limit {cap}. Retry when one ends.",
                        retry_after=5.0,
                        code="rate_limit_exceeded",
                        param="background",
                    )
            _add(s, org_id, {**response, LEASE: time.time() + lease_s}, items)  # under the same lock

    def renew(self, org_id: str, response_id: str, lease_s: float) -> str | None:
        """Extend a running background response's lease; its status now (None: deleted). Not active: untouched."""
        with self.db.session() as s:
            row = s.exec(
                select(StoredResponse)
                .where(StoredResponse.id == response_id, StoredResponse.organization_id == org_id)
                .with_for_update()
            ).first()
            if row is None:
                return None
            if row.status in ACTIVE:
                row.body = {**row.body, LEASE: time.time() + lease_s}
                s.add(row)
            return row.status

    def finish(self, org_id: str, response: dict[str, Any]) -> bool:
        """A background response's end: written only while it is still queued or in progress (not cancelled)."""
        with self.db.session() as s:
            row = _mine(s, org_id, response["id"], lock=True)
            if row.status not in ACTIVE:
                return False
            still = response["status"] in ACTIVE  # queued → in_progress keeps its lease
            row.status, row.body = response["status"], {**response, LEASE: row.body.get(LEASE)} if still else response
            s.add(row)
        return True

    def get(self, org_id: str, response_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return _public(_mine(s, org_id, response_id).body)

    def cancel(self, org_id: str, response_id: str, cancelled: dict[str, Any]) -> dict[str, Any]:
        """Mark an active background response cancelled (``cancelled``: its body then); a finished one is returned
        as it is (cancelling again is harmless); a foreground response cannot be cancelled."""
        with self.db.session() as s:
            row = _mine(s, org_id, response_id, lock=True)
            if not row.background:
                raise InvalidRequest(
                    "Only responses created with background=true can be cancelled.",
                    param="response_id",
                    code="invalid_request",
                )
            if row.status in ACTIVE:
                row.status, row.body = "cancelled", _public({**row.body, **cancelled, "status": "cancelled"})
                s.add(row)
            return _public(row.body)

    def delete(self, org_id: str, response_id: str) -> None:
        with self.db.session() as s:
            row = _mine(s, org_id, response_id, lock=True)
            s.exec(delete(ResponseInputItem).where(col(ResponseInputItem.response_id) == row.id))
            s.delete(row)

    def input_items(
        self, org_id: str, response_id: str, *, limit: int, after: str | None, order: str
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of a response's input items (``order`` asc|desc by position), and whether more follow."""
        with self.db.session() as s:
            _mine(s, org_id, response_id)
            query = select(ResponseInputItem).where(ResponseInputItem.response_id == response_id)
            if after is not None:
                anchor = s.exec(
                    select(ResponseInputItem.seq).where(
                        ResponseInputItem.response_id == response_id, ResponseInputItem.id == after
                    )
                ).first()
                if anchor is None:
                    raise NotFound(f"No such input item: {after}", param="after")
                query = query.where(
                    col(ResponseInputItem.seq) > anchor if order == "asc" else col(ResponseInputItem.seq) < anchor
                )
            by = col(ResponseInputItem.seq).asc() if order == "asc" else col(ResponseInputItem.seq).desc()
            rows = list(s.exec(query.order_by(by).limit(limit + 1)))
        return [r.item for r in rows[:limit]], len(rows) > limit

    def conversation(
        self, org_id: str, response_id: str, max_bytes: int = MAX_CONVERSATION_BYTES
    ) -> list[dict[str, Any]]:
        """The items a response continued with ``previous_response_id=response_id`` starts from: every response of
        the chain, oldest first, as its input items then its output items. The chain is walked and sized (stored
        JSON length of its bodies and items, in SQL) before any body or item is loaded: above ``max_bytes`` → 400."""
        chain: list[str] = []
        size = 0
        with self.db.session() as s:
            current: str | None = response_id
            while current is not None:
                link = s.exec(
                    select(
                        StoredResponse.status,
                        StoredResponse.previous_response_id,
                        func.length(cast(StoredResponse.body, String)),
                    ).where(StoredResponse.id == current, StoredResponse.organization_id == org_id)
                ).first()
                if link is None:
                    raise NotFound(
                        f"Previous response with id '{current}' not found.",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    )
                status, previous, body_size = link
                if status in ACTIVE and not _lapsed(s, _mine(s, org_id, current)):
                    raise InvalidRequest(
                        f"Previous response '{current}' is still {status}.",
                        param="previous_response_id",
                        code="invalid_request",
                    )
                chain.append(current)
                size += int(body_size or 0)
                if len(chain) > MAX_CHAIN:
                    raise InvalidRequest(
                        f"The previous_response_id chain is longer than {MAX_CHAIN} responses.",
                        param="previous_response_id",
                        code="invalid_request",
                    )
                current = previous
            size += int(
                s.exec(
                    select(func.coalesce(func.sum(func.length(cast(ResponseInputItem.item, String))), 0)).where(
                        col(ResponseInputItem.response_id).in_(chain)
                    )
                ).one()
                or 0
            )
            if size > max_bytes:
                raise InvalidRequest(
                    f"The conversation of previous_response_id '{response_id}' is too large: "
                    f"{size} bytes stored, at most {max_bytes}. Start a new conversation.",
                    param="previous_response_id",
                    code="conversation_too_large",
                )
            rows = {r.id: r for r in s.exec(select(StoredResponse).where(col(StoredResponse.id).in_(chain)))}
            items: dict[str, list[dict[str, Any]]] = {r: [] for r in chain}
            for item in s.exec(
                select(ResponseInputItem)
                .where(col(ResponseInputItem.response_id).in_(chain))
                .order_by(col(ResponseInputItem.seq))
            ):
                items[item.response_id].append(item.item)
        history: list[dict[str, Any]] = []
        for response in reversed(chain):
            history += items[response]
            history += rows[response].body.get("output") or []
        return history


def _add(s: Session, org_id: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
    row = StoredResponse(
        id=response["id"],
        organization_id=org_id,
        model=response["model"],
        status=response["status"],
        background=bool(response.get("background")),
        previous_response_id=response.get("previous_response_id"),
        created_at=int(response["created_at"]),
        body=response,
    )
    s.add(row)
    s.flush()  # the response row first: items reference it
    s.add_all(ResponseInputItem(id=item["id"], response_id=row.id, item=item) for item in items)


def _mine(s: Session, org_id: str, response_id: str, *, lock: bool = False) -> StoredResponse:
    query = select(StoredResponse).where(StoredResponse.id == response_id, StoredResponse.organization_id == org_id)
    row = s.exec(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    _lapsed(s, row)
    return row


def _lapsed(s: Session, row: StoredResponse) -> bool:
    """An active background response whose lease lapsed (no process runs it any more) is failed, here and now:
    True then. A row without a lease (written before leases, or by a foreground path) counts as lapsed."""
    if row.status not in ACTIVE or float(row.body.get(LEASE) or 0) > time.time():
        return False
    row.status = "failed"
    row.body = {**_public(row.body), "status": "failed", "error": RESTARTED}
    s.add(row)
    return True


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != LEASE} if LEASE in body else body
