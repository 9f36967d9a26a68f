"""batches (/v1/batches) and their per-line progress

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 02:40:00

Reserved in the chain so that parallel work can fill it in; until then it changes nothing.
"""

import sqlalchemy as sa  # noqa: F401  (used once the revision is filled in)
import sqlmodel  # noqa: F401
from alembic import op  # noqa: F401

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
