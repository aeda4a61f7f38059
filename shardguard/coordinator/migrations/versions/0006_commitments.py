"""FROST nonce commitments made ahead by the signers (API.md §1.13): ``commitments``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commitments",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("scheme", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("hiding", sa.LargeBinary(33), nullable=False),
        sa.Column("binding", sa.LargeBinary(33), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "id", name="pk_commitments"),
    )
    op.create_index("ix_commitments_stock", "commitments", ["node_id", "scheme", "generation", "created_at"])
    op.create_index("ix_commitments_created_at", "commitments", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_commitments_created_at", table_name="commitments")
    op.drop_index("ix_commitments_stock", table_name="commitments")
    op.drop_table("commitments")
