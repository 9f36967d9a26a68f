"""stored responses (/v1/responses, store=true) and their input items

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 02:40:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("organization_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("background", sa.Boolean(), nullable=False),
        sa.Column("previous_response_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_responses_organization_id"), ["organization_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_responses_status"), ["status"], unique=False)
    op.create_table(
        "response_input_items",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("response_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("item", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["response_id"],
            ["responses.id"],
        ),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("response_input_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_response_input_items_response_id"), ["response_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("response_input_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_response_input_items_response_id"))
    op.drop_table("response_input_items")
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_status"))
        batch_op.drop_index(batch_op.f("ix_responses_organization_id"))
    op.drop_table("responses")
