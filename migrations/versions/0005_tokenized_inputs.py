"""tokenized text inputs, cached per (dataset blob, tokenizer)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 02:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tokenized_inputs",
        sa.Column("source_blob", sa.String(length=64), nullable=False),
        sa.Column("tokenizer_digest", sa.String(length=64), nullable=False),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source_blob", "tokenizer_digest",
                                name=op.f("pk_tokenized_inputs")),
    )


def downgrade() -> None:
    op.drop_table("tokenized_inputs")
