"""deletion request lifecycle

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:08:27.682915
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows get defaults: no attempts yet, nothing erased.
    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("error", sa.JSON(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_deletion_requests_deadline"), ["deadline"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_deletion_requests_status"), ["status"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("erased", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:

    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_column("erased")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("purged_at")
        batch_op.drop_column("withdrawn_at")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("not_before")

    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deletion_requests_status"))
        batch_op.drop_index(batch_op.f("ix_deletion_requests_deadline"))
        batch_op.drop_column("error")
        batch_op.drop_column("attempts")
