"""Hospital IT: HL7 v2 messages taken by the MLLP listener and the orders they carry (node/store/schema_hl7.py).

Revision ID: 0007_hospital_it
Revises: 0005_compat_floor
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007_hospital_it"
down_revision: Union[str, Sequence[str], None] = "0005_compat_floor"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: new tables only: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Create hl7_messages and hl7_orders with their indexes."""
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("message_type", sa.String(length=16), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("sending_application", sa.String(length=227), nullable=False),
        sa.Column("sending_facility", sa.String(length=227), nullable=False),
        sa.Column("accession", sa.String(length=64), nullable=True),
        sa.Column("peer", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_hl7_messages_control", "hl7_messages", ["sending_application", "control_id"])
    op.create_index("ix_hl7_messages_received", "hl7_messages", ["received_at"])
    op.create_table(
        "hl7_orders",
        sa.Column("accession", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("patient_issuer", sa.String(length=64), nullable=False),
        sa.Column("placer_number", sa.String(length=64), nullable=False),
        sa.Column("filler_number", sa.String(length=64), nullable=False),
        sa.Column("order_control", sa.String(length=2), nullable=False),
        sa.Column("order_status", sa.String(length=2), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("clinical_info", sa.Text(), nullable=False),
        sa.Column("procedure", sa.Text(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("matched_study_uid", sa.String(length=64), nullable=True),
        sa.Column("matched_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("accession"),
    )
    op.create_index("ix_hl7_orders_updated", "hl7_orders", ["updated_at"])


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_hl7_orders_updated", table_name="hl7_orders")
    op.drop_table("hl7_orders")
    op.drop_index("ix_hl7_messages_received", table_name="hl7_messages")
    op.drop_index("ix_hl7_messages_control", table_name="hl7_messages")
    op.drop_table("hl7_messages")
