"""Sign bundles: ``jobs.bundle_id``, the bundle job a sign request ran in (API.md §1.6).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("bundle_id", sa.String(32), nullable=True))
    op.create_index("ix_jobs_bundle_id", "jobs", ["bundle_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_bundle_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite rebuilds the table to drop a column
        batch.drop_column("bundle_id")
