"""Jobs survive endpoint outages: ``jobs.give_up_at`` (their retry horizon) and the per-endpoint ``circuits``.

Revision ID: 0003_resilience
Revises: 0002_dicomweb
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003_resilience"
down_revision: Union[str, Sequence[str], None] = "0002_dicomweb"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: a new nullable column and a new table: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Add the job's retry horizon and the circuits table."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("give_up_at", sa.Float(), nullable=True))
    op.create_table(
        "circuits",
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("retry_at", sa.Float(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("probe_job", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint"),
        if_not_exists=True,
    )


def downgrade() -> None:
    """Drop the circuits table and the job's retry horizon."""
    op.drop_table("circuits")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("give_up_at")
