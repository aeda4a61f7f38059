"""Client idempotency keys on jobs: ``jobs.idempotency_key`` and ``jobs.idempotency_fp``,
unique per requesting token.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.add_column("jobs", sa.Column("idempotency_fp", sa.String(64), nullable=True))
    op.create_index("uq_jobs_idempotency", "jobs", ["requested_by", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_jobs_idempotency", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:  # SQLite rebuilds the table to drop columns
        batch.drop_column("idempotency_fp")
        batch.drop_column("idempotency_key")
