"""Alembic environment. Driven programmatically by ``storage.migrate``; the connection is passed in."""

from alembic import context
from sqlmodel import SQLModel

import storage.tables  # noqa: F401 - registers the tables on SQLModel.metadata

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs go through table copies
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
