"""Sign-outs of the HTTP side's sessions (node/store/schema_sso.py, node/http/sso.py).

Revision ID: 0010_sso
Revises: 0007_hospital_it
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0010_sso"
down_revision: Union[str, Sequence[str], None] = "0007_hospital_it"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: a new table only: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Create http_sessions_ended and its expiry index."""
    op.create_table(
        "http_sessions_ended",
        sa.Column("sid_sha256", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sid_sha256"),
    )
    op.create_index("ix_http_sessions_ended_expires_at", "http_sessions_ended", ["expires_at"])


def downgrade() -> None:
    """Drop it again."""
    op.drop_index("ix_http_sessions_ended_expires_at", table_name="http_sessions_ended")
    op.drop_table("http_sessions_ended")
