"""checkpoint permissions (share a fine-tuned model or checkpoint with other organizations); a job's integrations

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 02:40:00
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_permissions",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("organization_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("model_id", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("project_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["organizations.id"],
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("model_id", "project_id", name="uq_checkpoint_permissions_model_project"),
    )
    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkpoint_permissions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_checkpoint_permissions_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_checkpoint_permissions_project_id"), ["project_id"], unique=False)
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("integrations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("integrations")
    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkpoint_permissions_project_id"))
        batch_op.drop_index(batch_op.f("ix_checkpoint_permissions_organization_id"))
        batch_op.drop_index(batch_op.f("ix_checkpoint_permissions_model_id"))
    op.drop_table("checkpoint_permissions")
