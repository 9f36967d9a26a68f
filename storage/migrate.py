"""Schema migrations (Alembic), run on every start: an upgrade keeps existing data.

Postgres: the upgrade holds an advisory lock so that several gateways/workers starting at once do not
race. SQLite: the single-writer lock does the same.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from storage.db import Database

_MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x7475_6E65  # "tune"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        command.upgrade(alembic_config(connection), revision)


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def revise(db: Database, message: str) -> None:
    """Developer helper: autogenerate a new revision against an up-to-date database."""
    with db.engine.begin() as connection:
        command.revision(alembic_config(connection), message=message, autogenerate=True)
