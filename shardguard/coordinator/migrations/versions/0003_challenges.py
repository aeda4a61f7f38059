"""Verifier-chosen nonces: ``node_challenges`` (each verifier's newest challenge to a node) and
``nodes.evidence_challenges`` (the challenges a node's evidence answers).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("evidence_challenges", sa.JSON(), nullable=True))
    op.create_table(
        "node_challenges",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("challenger", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id", "challenger", name="pk_node_challenges"),
    )


def downgrade() -> None:
    op.drop_table("node_challenges")
    with op.batch_alter_table("nodes") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("evidence_challenges")
