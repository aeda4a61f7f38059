"""Initial schema: nodes, nonces, API tokens, keys, jobs, tasks, relay mailbox, audit mirror.

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("identity_public_key", sa.LargeBinary(), nullable=False),
        sa.Column("kem_id", sa.Integer(), nullable=False),
        sa.Column("peer_card", sa.LargeBinary(), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.Column("collateral", sa.LargeBinary(), nullable=True),
        sa.Column("evidence_nonce", sa.LargeBinary(), nullable=True),
        sa.Column("attestation", sa.JSON(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        _ts("registered_at"),
        _ts("last_seen"),
        sa.PrimaryKeyConstraint("id", name="pk_nodes"),
    )
    op.create_table(
        "node_nonces",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.LargeBinary(64), nullable=False),
        _ts("expires_at"),
        sa.PrimaryKeyConstraint("node_id", "nonce", name="pk_node_nonces"),
    )
    op.create_index("ix_node_nonces_expires_at", "node_nonces", ["expires_at"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_table(
        "keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("scheme", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("node_ids", sa.JSON(), nullable=False),
        sa.Column("public_key", sa.String(256), nullable=True),
        sa.Column("public_package", sa.JSON(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_keys"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("instance", sa.String(64), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        _ts("lease_until", nullable=True),
        sa.Column("next_msg_seq", sa.BigInteger(), nullable=False),
        sa.Column("mailbox_bytes", sa.BigInteger(), nullable=False),
        sa.Column("requested_by", sa.String(32), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["key_id"], ["keys.id"], name="fk_jobs_key_id_keys"),
    )
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_key_status", "jobs", ["key_id", "status"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("party_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        _ts("lease_until", nullable=True),
        _ts("created_at"),
        _ts("claimed_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_tasks_job_id_jobs"),
        sa.UniqueConstraint("job_id", "node_id", name="uq_tasks_job_id_node_id"),
    )
    op.create_index("ix_tasks_job_id", "tasks", ["job_id"])
    op.create_index("ix_tasks_node_status", "tasks", ["node_id", "status"])
    op.create_table(
        "mailbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("job_seq", sa.BigInteger(), nullable=False),
        sa.Column("from_node", sa.String(64), nullable=False),
        sa.Column("to_node", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_mailbox"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_mailbox_job_id_jobs"),
        sa.UniqueConstraint("job_id", "from_node", "to_node", "seq", name="uq_mailbox_job_id_from_node_to_node_seq"),
        sa.UniqueConstraint("job_id", "job_seq", name="uq_mailbox_job_id_job_seq"),
    )
    op.create_table(
        "audit",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("entry_hash", sa.String(128), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("identity_public_key", sa.LargeBinary(), nullable=False),
        _ts("received_at"),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
        sa.UniqueConstraint("node_id", "seq", name="uq_audit_node_id_seq"),
    )


def downgrade() -> None:
    for table in ("audit", "mailbox", "tasks", "jobs", "keys", "api_tokens", "node_nonces", "nodes"):
        op.drop_table(table)
