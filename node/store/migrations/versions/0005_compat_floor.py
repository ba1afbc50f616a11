"""Rolling upgrades: the compatibility floor of the schema (node/store/compat.py).

Revision ID: 0005_compat_floor
Revises: 0004_outbox_verify
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005_compat_floor"
down_revision: Union[str, Sequence[str], None] = "0004_outbox_verify"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: a new table: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Create the one-row table of the revision and its compatibility floor (filled by node.store.migrate)."""
    op.create_table(
        "schema_compat",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("compatible_from", sa.String(length=64), nullable=False),
        sa.Column("written_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    """Drop it again."""
    op.drop_table("schema_compat")
