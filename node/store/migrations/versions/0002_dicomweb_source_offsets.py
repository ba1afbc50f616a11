"""source_offsets: the position of each polled DICOMweb source (Azure DICOM service change feed) and its health.

Revision ID: 0002_dicomweb
Revises: 0001_baseline
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002_dicomweb"
down_revision: Union[str, Sequence[str], None] = "0001_baseline"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: a new table: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Create the table of source positions."""
    op.create_table(
        "source_offsets",
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("feed_offset", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("ingested", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_poll_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("source"),
        if_not_exists=True,
    )


def downgrade() -> None:
    """Drop the table of source positions."""
    op.drop_table("source_offsets")
