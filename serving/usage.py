"""Usage per organization and API key, recorded off the request path: queued, written once a second.

A row that cannot be written never holds up the others. While the database is away (a connection error) rows
wait, up to ``MAX_PENDING``; any other failure of a batch is a row's fault, so the batch is written row by row and
the row(s) that still fail are set aside: logged with their content, never retried. Strings are cut to their
column's width before a row is written (``storage.usage.fit``), so a caller-shaped id cannot be such a row. The
request path queues a plain tuple (``Usage``, ~1 µs); the table row (~25 µs of SQLModel) is built by the writer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from storage.accounts import Principal
from storage.ids import now
from storage.tables import UsageRecord
from storage.usage import UsageStore, fit

log = logging.getLogger("tunegate.serving")
MAX_PENDING = 100_000  # rows held while the database is away; beyond, the oldest are set aside
DATABASE_AWAY = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
Row = TypeVar("Row")


class RowStore(Protocol[Row]):
    def add_many(self, rows: list[Row]) -> None: ...


class BatchedWriter(Generic[Row]):
    """Rows queued by the request path, written once every ``interval`` by ``run`` (one task per process).
    ``flush`` is serialized: a reader that flushes first sees every row queued before it (read-your-writes within
    one gateway). What waits is bounded by ``max_pending`` units of ``size`` (a row each, unless a subclass
    weighs them)."""

    what = "rows"

    def __init__(self, store: RowStore[Row], interval: float = 1.0, max_pending: int = MAX_PENDING) -> None:
        self.store, self.interval, self.max_pending = store, interval, max_pending
        self._pending: list[Row] = []
        self._held = 0  # the size of the rows queued or being written
        self._flushing: asyncio.Lock | None = None  # made in the running loop
        self.set_aside = 0  # rows given up on (each logged)

    def size(self, row: Row) -> int:
        return 1

    def queue(self, row: Row) -> None:
        self._pending.append(row)
        self._held += self.size(row)
        while self._held > self.max_pending and len(self._pending) > 1:
            oldest = self._pending.pop(0)
            self._held -= self.size(oldest)
            self._give_up(oldest, "too many rows waiting for the database")

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            await self.flush()

    async def flush(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            batch, self._pending = self._pending, []
            if batch:
                again, done = await asyncio.to_thread(self._write_sized, batch)
                self._held -= done
                self._pending[:0] = again

    def _write_sized(self, batch: list[Row]) -> tuple[list[Row], int]:
        """``_write``, and the size of the rows that left the queue (written or set aside)."""
        again = self._write(batch)
        kept = {id(row) for row in again}
        return again, sum(self.size(row) for row in batch if id(row) not in kept)

    def _write(self, batch: list[Row]) -> list[Row]:
        """Write ``batch``; return the rows to try again (the database is away)."""
        try:
            self.store.add_many(batch)
            return []
        except DATABASE_AWAY as exc:
            log.warning(
                "%s: the database is unavailable (%s); %d row(s) wait",
                self.what,
                str(exc).splitlines()[0][:200],
                len(batch),
            )
            return batch
        except Exception as exc:  # a row at fault: find it, write the others
            log.warning("%s: writing %d row(s) failed (%r); writing them one by one", self.what, len(batch), exc)
        for i, row in enumerate(batch):
            try:
                self.store.add_many([row])
            except DATABASE_AWAY:
                return batch[i:]
            except Exception as exc:
                self._give_up(row, repr(exc))
        return []

    def _give_up(self, row: Row, why: str) -> None:
        self.set_aside += 1
        log.error("%s: a row set aside (%s): %s", self.what, why, self.describe(row))

    def describe(self, row: Row) -> Any:
        """What the log shows of a row set aside."""
        return row.model_dump() if hasattr(row, "model_dump") else row


class Usage(NamedTuple):
    """One request's usage as the request path queues it."""

    organization_id: str
    api_key_id: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    request_id: str | None
    created_at: int

    def record(self) -> UsageRecord:
        return fit(UsageRecord(**self._asdict()))


class _Records:
    """The usage store, given queued ``Usage`` tuples (or table rows) and writing table rows."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store

    def add_many(self, rows: list[Usage | UsageRecord]) -> None:
        self.store.add_many([row.record() if isinstance(row, Usage) else row for row in rows])


class UsageRecorder(BatchedWriter[Usage | UsageRecord]):
    what = "usage"

    def __init__(self, store: UsageStore, interval: float = 1.0) -> None:
        super().__init__(_Records(store), interval)

    def add(self, principal: Principal, model: str, endpoint: str, usage: dict | None, request_id: str | None) -> None:
        if not isinstance(usage, dict):
            return
        self.queue(
            Usage(
                principal.organization_id,
                principal.key_id,
                model,
                endpoint,
                _count(usage.get("prompt_tokens")),
                _count(usage.get("completion_tokens")),
                request_id,
                now(),
            )
        )


def _count(value: object) -> int:
    """A token count from an engine's usage, as a non-negative int (anything else counts 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else 0
