"""Outbox: in-flight sends are verified before a resend; Storage Commitment transactions (branch exactonce).

Revision ID: 0004_outbox_verify
Revises: 0003_resilience
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004_outbox_verify"
down_revision: Union[str, Sequence[str], None] = "0003_resilience"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: new columns (the NOT NULL one with a server default) and an index: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Add the in-flight flag and the Storage Commitment columns to the outbox."""
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("in_flight", sa.Boolean(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("commit_txn", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("commit_requested_at", sa.Float(), nullable=True))
    op.create_index("ix_outbox_commit_txn", "outbox", ["commit_txn"], unique=False)


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_outbox_commit_txn", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("commit_requested_at")
        batch.drop_column("commit_txn")
        batch.drop_column("in_flight")
