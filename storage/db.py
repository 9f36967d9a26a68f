"""Engines and sessions. SQLite gets WAL, foreign keys and a busy timeout; Postgres is used as given."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine, Row, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.expression import Executable
from sqlmodel import Session, create_engine

log = logging.getLogger("tunegate.db")
T = TypeVar("T")

# The classes a database outage is raised as; ``is_transient`` tells an outage (restart, failover, network blip,
# pool exhausted, SQLite busy past its timeout: worth a retry, a 503 at the edge) from a bug raised as the same
# class (SQLite's "no such table" is an OperationalError too: a 500).
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
# Postgres SQLSTATE classes of an unavailable server: connection exception, operator intervention (shutdown,
# restart), insufficient resources (too many connections)
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (DisconnectionError, PoolTimeout)):
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = getattr(exc, "orig", None)
    if type(orig).__module__.startswith("sqlite3"):
        return any(word in str(orig).lower() for word in ("locked", "busy"))
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg: None when no connection could be made at all
    return sqlstate is None or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def retry_transient(call: Callable[[], T], what: str, give_up_after_s: float = 600.0) -> T:
    """``call()``, retried with backoff (0.25 s doubling to 10 s) while it fails with a transient database error,
    for up to ``give_up_after_s``; any other error (and the last transient one) is raised."""
    started, wait = time.monotonic(), 0.25
    while True:
        try:
            return call()
        except TRANSIENT_DB_ERRORS as exc:
            if not is_transient(exc) or time.monotonic() - started > give_up_after_s:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.2f s", what, str(exc).splitlines()[0][:200], wait)
            time.sleep(wait)
            wait = min(wait * 2, 10.0)


class Retrying(Generic[T]):
    """``Retrying(store)`` behaves like ``store`` with every method call under ``retry_transient``: what a long
    child process (training, export) uses, so that a database restart during a six-hour job costs a pause, not
    the job. Only idempotent or fenced writes belong behind it (a retried commit may have landed)."""

    def __init__(self, target: T) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_transient(lambda: attr(*args, **kwargs), what=name)

        return call


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre-ping: a connection the server dropped (restart, failover) is replaced instead of failing the request;
    # connect_timeout: an unreachable host fails fast (→ 503) instead of hanging a request for minutes.
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=10, connect_args={"connect_timeout": 5}
    )


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API connection
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Database:
    """Owns the engine; hands out short-lived sessions (one unit of work each)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def first_row(self, statement: Executable) -> Row[Any] | None:
        """The first row of a read on a plain connection: no ORM objects, no session, no commit — for lookups made
        on every request (an API key), where those cost more than the query."""
        with self.engine.connect() as conn:
            return conn.execute(statement).first()

    def ping(self) -> None:
        """One ``SELECT 1``: raises what a query would while the database is unreachable."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()
