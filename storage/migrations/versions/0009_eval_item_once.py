"""eval output items: one per (run, data-source item) — a run taken over can never store an item twice

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 23:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # items stored twice before the constraint existed: keep the first of each
    op.execute(
        sa.text(
            "DELETE FROM eval_output_items WHERE seq NOT IN "
            "(SELECT MIN(seq) FROM eval_output_items GROUP BY run_id, datasource_item_id)"
        )
    )
    with op.batch_alter_table("eval_output_items", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_eval_output_items_run_item", ["run_id", "datasource_item_id"])


def downgrade() -> None:
    with op.batch_alter_table("eval_output_items", schema=None) as batch_op:
        batch_op.drop_constraint("uq_eval_output_items_run_item", type_="unique")
