"""Stored responses (``/v1/responses`` with ``store`` true): the Response object, its input items, its chain.

Every read filters on the organization: another organization's response is "not found", as is a deleted one. A
response's own input items are rows of their own (``input_items.list`` pages over them); a conversation continued
with ``previous_response_id`` is rebuilt by walking the chain back: each ancestor's input items, then its output.
Background responses are written when created (``queued``) and finished with a conditional update, so a
``cancel`` that lands first wins over the generation's end.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, delete, select

from storage.db import Database
from storage.errors import InvalidRequest, NotFound
from storage.tables import ResponseInputItem, StoredResponse

MAX_CHAIN = 256  # previous_response_id links followed at most
ACTIVE = ("queued", "in_progress")


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, org_id: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Store a Response object (its ``id``, ``status`` …) with its own input items (each with an ``id``)."""
        row = StoredResponse(id=response["id"], organization_id=org_id, model=response["model"],
                             status=response["status"], background=bool(response.get("background")),
                             previous_response_id=response.get("previous_response_id"),
                             created_at=int(response["created_at"]), body=response)
        with self.db.session() as s:
            s.add(row)
            s.flush()  # the response row first: items reference it
            s.add_all(ResponseInputItem(id=item["id"], response_id=row.id, item=item) for item in items)

    def finish(self, org_id: str, response: dict[str, Any]) -> bool:
        """A background response's end: written only while it is still queued or in progress (not cancelled)."""
        with self.db.session() as s:
            row = _mine(s, org_id, response["id"], lock=True)
            if row.status not in ACTIVE:
                return False
            row.status, row.body = response["status"], response
            s.add(row)
        return True

    def get(self, org_id: str, response_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return _mine(s, org_id, response_id).body

    def cancel(self, org_id: str, response_id: str, cancelled: dict[str, Any]) -> dict[str, Any]:
        """Mark an active background response cancelled (``cancelled``: its body then); a finished one is returned
        as it is (cancelling again is harmless); a foreground response cannot be cancelled."""
        with self.db.session() as s:
            row = _mine(s, org_id, response_id, lock=True)
            if not row.background:
                raise InvalidRequest("Only responses created with background=true can be cancelled.",
                                     param="response_id", code="invalid_request")
            if row.status in ACTIVE:
                row.status, row.body = "cancelled", {**row.body, **cancelled, "status": "cancelled"}
                s.add(row)
            return row.body

    def delete(self, org_id: str, response_id: str) -> None:
        with self.db.session() as s:
            row = _mine(s, org_id, response_id, lock=True)
            s.exec(delete(ResponseInputItem).where(col(ResponseInputItem.response_id) == row.id))
            s.delete(row)

    def input_items(self, org_id: str, response_id: str, *, limit: int, after: str | None,
                    order: str) -> tuple[list[dict[str, Any]], bool]:
        """One page of a response's input items (``order`` asc|desc by position), and whether more follow."""
        with self.db.session() as s:
            _mine(s, org_id, response_id)
            query = select(ResponseInputItem).where(ResponseInputItem.response_id == response_id)
            if after is not None:
                anchor = s.exec(select(ResponseInputItem.seq).where(ResponseInputItem.response_id == response_id,
                                                                    ResponseInputItem.id == after)).first()
                if anchor is None:
                    raise NotFound(f"No such input item: {after}", param="after")
                query = query.where(col(ResponseInputItem.seq) > anchor if order == "asc"
                                    else col(ResponseInputItem.seq) < anchor)
            by = col(ResponseInputItem.seq).asc() if order == "asc" else col(ResponseInputItem.seq).desc()
            rows = list(s.exec(query.order_by(by).limit(limit + 1)))
        return [r.item for r in rows[:limit]], len(rows) > limit

    def conversation(self, org_id: str, response_id: str) -> list[dict[str, Any]]:
        """The items a response continued with ``previous_response_id=response_id`` starts from: every response of
        the chain, oldest first, as its input items then its output items."""
        chain: list[StoredResponse] = []
        with self.db.session() as s:
            current: str | None = response_id
            while current is not None:
                try:
                    row = _mine(s, org_id, current)
                except NotFound:
                    raise NotFound(f"Previous response with id '{current}' not found.",
                                   param="previous_response_id", code="previous_response_not_found") from None
                if row.status in ACTIVE:
                    raise InvalidRequest(f"Previous response '{current}' is still {row.status}.",
                                         param="previous_response_id", code="invalid_request")
                chain.append(row)
                if len(chain) > MAX_CHAIN:
                    raise InvalidRequest(f"The previous_response_id chain is longer than {MAX_CHAIN} responses.",
                                         param="previous_response_id", code="invalid_request")
                current = row.previous_response_id
            items: dict[str, list[dict[str, Any]]] = {r.id: [] for r in chain}
            for item in s.exec(select(ResponseInputItem).where(col(ResponseInputItem.response_id).in_(list(items)))
                               .order_by(col(ResponseInputItem.seq))):
                items[item.response_id].append(item.item)
        history: list[dict[str, Any]] = []
        for row in reversed(chain):
            history += items[row.id]
            history += row.body.get("output") or []
        return history


def _mine(s: Session, org_id: str, response_id: str, *, lock: bool = False) -> StoredResponse:
    query = select(StoredResponse).where(StoredResponse.id == response_id, StoredResponse.organization_id == org_id)
    row = s.exec(query.with_for_update() if lock else query).first()
    if row is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return row
