"""DKLs23 pre-signatures made ahead by the signers of ECDSA keys (API.md §1.15): ``presignatures``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "presignatures",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("id", sa.LargeBinary(32), nullable=False),
        sa.Column("signer_set", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("generations", sa.JSON(), nullable=False),
        sa.Column("big_r", sa.LargeBinary(33), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["keys.id"], name="fk_presignatures_key_id_keys"),
        sa.PrimaryKeyConstraint("key_id", "id", name="pk_presignatures"),
    )
    op.create_index("ix_presignatures_stock", "presignatures", ["key_id", "signer_set", "epoch", "created_at"])
    op.create_index("ix_presignatures_created_at", "presignatures", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_presignatures_created_at", table_name="presignatures")
    op.drop_index("ix_presignatures_stock", table_name="presignatures")
    op.drop_table("presignatures")
