"""Enrollment binding: ``nodes.enrolled_by``, the token a node id first registered with.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("enrolled_by", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("enrolled_by")
