"""Wire types shared by every area: list pages and deletion receipts."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request

from storage.errors import InvalidRequest


class DeletedObject(msgspec.Struct):
    id: str
    object: str
    deleted: bool = True


def list_page(data: list[Any], *, has_more: bool | None = None, ids: bool = False) -> dict[str, Any]:
    """``{"object": "list", "data": [...]}``; paginated lists add ``has_more`` (and ``first_id``/``last_id``)."""
    page: dict[str, Any] = {"object": "list", "data": data}
    if has_more is not None:
        page["has_more"] = has_more
    if ids:
        page["first_id"] = _id(data[0]) if data else None
        page["last_id"] = _id(data[-1]) if data else None
    return page


def _id(item: Any) -> str:
    return item["id"] if isinstance(item, dict) else item.id


async def read_json(request: Request) -> Any:
    """The request body as JSON (``null`` when empty); a 400 naming the problem otherwise."""
    raw = await request.body()
    try:
        return msgspec.json.decode(raw or b"null")
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.", param=None, code="invalid_json") from None
