"""acceptance gate: each job's fallback chain and gate thresholds

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL on existing rows: jobs queued before the gate existed run with the service defaults.
    for table in ("jobs", "deletion_requests"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("fallback", sa.JSON(), nullable=True))
            batch_op.add_column(sa.Column("gate", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ("deletion_requests", "jobs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("gate")
            batch_op.drop_column("fallback")
