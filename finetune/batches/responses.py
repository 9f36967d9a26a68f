"""``/v1/responses`` lines: translated onto chat completions with ``serving.responses`` (the API's own functions),
stored per organization when ``store`` is true (the default), as the API would.

A line's response id is derived from (batch, line), so a line redone after its worker died stores no second
response: the first one stored is the answer (``storage.responses`` refuses the same id twice).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from sqlalchemy.exc import IntegrityError

from serving import responses
from storage.db import Database
from storage.errors import InvalidRequest
from storage.ids import now
from storage.responses import ResponseStore
from storage.settings import RequestLimits
from storage.tables import Batch


class ResponseLines:
    def __init__(self, db: Database, batch: Batch, limits: RequestLimits) -> None:
        self.store, self.batch, self.limits = ResponseStore(db), batch, limits

    async def check(self, body: dict[str, Any]) -> tuple[responses.ResponsesRequest, dict[str, Any]]:
        """The checked request and its chat body (a 400 names the Responses field)."""
        asked = responses.parse(body)
        if asked.background:
            raise InvalidRequest(
                "background=true is not supported in a batch.", param="background", code="unsupported_parameter"
            )
        history = (
            await asyncio.to_thread(self.store.conversation, self.batch.organization_id, asked.previous_response_id)
            if asked.previous_response_id
            else []
        )
        return asked, responses.chat_request(asked, history, self.limits)

    async def answer(self, asked: responses.ResponsesRequest, chat: dict[str, Any], line: int) -> dict[str, Any]:
        """The Response object for a chat answer, stored unless ``store`` is false."""
        response_id = "resp_" + hashlib.sha256(f"{self.batch.id}:{line}".encode()).hexdigest()[:40]
        done = responses.from_chat(asked, chat, responses.skeleton(asked, response_id, now(), "in_progress"))
        if asked.store:
            try:
                await asyncio.to_thread(self.store.add, self.batch.organization_id, done, asked.input)
            except IntegrityError:  # stored by a worker that died before committing the line: that one stands
                return await asyncio.to_thread(self.store.get, self.batch.organization_id, response_id)
        return done
