"""The hospital workflow: MPPS and IAN received, the trigger of each decision, UPS-RS workitems (branch workflow).

Revision ID: 0008_workflow
Revises: 0010_sso
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008_workflow"
down_revision: Union[str, Sequence[str], None] = "0010_sso"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: new tables only: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Create study_notices, notice_refs, decisions and ups_workitems (node/store/schema_workflow.py)."""
    op.create_table(
        "study_notices",
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("dataset", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("uid", "study_uid"),
    )
    op.create_index("ix_study_notices_study", "study_notices", ["study_uid"], unique=False)
    op.create_table(
        "notice_refs",
        sa.Column("notice_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=True),
        sa.Column("series_uid", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("notice_uid", "sop_instance_uid"),
    )
    op.create_table(
        "decisions",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.Float(), nullable=False),
        sa.Column("last_instance_at", sa.Float(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("rules", sa.Text(), nullable=True),
        sa.Column("discontinued", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("study_uid", "version"),
    )
    op.create_table(
        "ups_workitems",
        sa.Column("workitem_uid", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rule_name", sa.String(length=128), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("study_version", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workitem_uid"),
    )
    op.create_index("ix_ups_workitems_study", "ups_workitems", ["study_uid"], unique=False)
    op.create_index("ix_ups_workitems_state", "ups_workitems", ["source", "state"], unique=False)


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_ups_workitems_state", table_name="ups_workitems")
    op.drop_index("ix_ups_workitems_study", table_name="ups_workitems")
    op.drop_table("ups_workitems")
    op.drop_table("decisions")
    op.drop_table("notice_refs")
    op.drop_index("ix_study_notices_study", table_name="study_notices")
    op.drop_table("study_notices")
