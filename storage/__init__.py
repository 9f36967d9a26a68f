"""Storage: SQLModel tables and sessions (SQLite | Postgres), the blob store, migrations.

The bottom layer of tunegate: it imports nothing from gateway/serving/finetune. It also holds the
two things every layer shares — the typed Settings and the domain error tree — so that imports
keep pointing one way.
"""
