"""Usage per organization and API key, recorded off the request path: queued, written once a second."""

from __future__ import annotations

import asyncio
import logging

from storage.accounts import Principal
from storage.ids import now
from storage.tables import UsageRecord
from storage.usage import UsageStore

log = logging.getLogger("tunegate.serving")


class UsageRecorder:
    def __init__(self, store: UsageStore, interval: float = 1.0) -> None:
        self.store, self.interval = store, interval
        self._pending: list[UsageRecord] = []

    def add(self, principal: Principal, model: str, endpoint: str, usage: dict | None, request_id: str | None) -> None:
        if not isinstance(usage, dict):
            return
        self._pending.append(UsageRecord(
            organization_id=principal.organization_id, api_key_id=principal.key_id, model=model, endpoint=endpoint,
            prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
            request_id=request_id, created_at=now(),
        ))

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.store.add_many, batch)
        except Exception:  # keep them for the next try rather than lose them
            log.exception("writing %d usage record(s) failed; will retry", len(batch))
            self._pending[:0] = batch
