"""Usage per organization and API key, recorded off the request path: queued, written once a second.

A row that cannot be written never holds up the others. While the database is away (a connection error) rows
wait, up to ``MAX_PENDING``; any other failure of a batch is a row's fault, so the batch is written row by row and
the row(s) that still fail are set aside: logged with their content, never retried. Strings are cut to their
column's width before a row is queued (``storage.usage.fit``), so a caller-shaped id cannot be such a row.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from storage.accounts import Principal
from storage.ids import now
from storage.tables import UsageRecord
from storage.usage import UsageStore, fit

log = logging.getLogger("tunegate.serving")
MAX_PENDING = 100_000  # rows held while the database is away; beyond, the oldest are set aside
DATABASE_AWAY = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


class UsageRecorder:
    def __init__(self, store: UsageStore, interval: float = 1.0) -> None:
        self.store, self.interval = store, interval
        self._pending: list[UsageRecord] = []
        self.set_aside = 0  # rows given up on (each logged)

    def add(self, principal: Principal, model: str, endpoint: str, usage: dict | None, request_id: str | None) -> None:
        if not isinstance(usage, dict):
            return
        self._pending.append(fit(UsageRecord(
            organization_id=principal.organization_id, api_key_id=principal.key_id, model=model, endpoint=endpoint,
            prompt_tokens=_count(usage.get("prompt_tokens")), completion_tokens=_count(usage.get("completion_tokens")),
            request_id=request_id, created_at=now(),
        )))
        if len(self._pending) > MAX_PENDING:
            self._give_up(self._pending.pop(0), "too many rows waiting for the database")

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._pending[:0] = await asyncio.to_thread(self._write, batch)

    def _write(self, batch: list[UsageRecord]) -> list[UsageRecord]:
        """Write ``batch``; return the rows to try again (the database is away)."""
        try:
            self.store.add_many(batch)
            return []
        except DATABASE_AWAY as exc:
            log.warning("usage: the database is unavailable (%s); %d row(s) wait", str(exc).splitlines()[0][:200],
                        len(batch))
            return batch
        except Exception as exc:  # a row at fault: find it, write the others
            log.warning("usage: writing %d row(s) failed (%r); writing them one by one", len(batch), exc)
        for i, row in enumerate(batch):
            try:
                self.store.add_many([row])
            except DATABASE_AWAY:
                return batch[i:]
            except Exception as exc:
                self._give_up(row, repr(exc))
        return []

    def _give_up(self, row: UsageRecord, why: str) -> None:
        self.set_aside += 1
        log.error("usage record set aside (%s): %s", why, row.model_dump())


def _count(value: object) -> int:
    """A token count from an engine's usage, as a non-negative int (anything else counts 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else 0
