"""stored chat completions (store=true on /v1/chat/completions)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 02:40:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_completions",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("organization_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("chat_completions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chat_completions_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_chat_completions_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_chat_completions_organization_id"), ["organization_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("chat_completions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chat_completions_organization_id"))
        batch_op.drop_index(batch_op.f("ix_chat_completions_model"))
        batch_op.drop_index(batch_op.f("ix_chat_completions_created_at"))
    op.drop_table("chat_completions")
