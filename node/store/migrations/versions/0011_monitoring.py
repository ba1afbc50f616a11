"""Monitoring: radiologists' reports, AI observations, endpoint calls, baselines, drift, alerts
(node/store/schema_monitoring.py).

Revision ID: 0011_monitoring
Revises: 0008_workflow
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0011_monitoring"
down_revision: Union[str, Sequence[str], None] = "0008_workflow"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None
#: new tables only: a node of the previous version keeps working (node/store/compat.py)
additive = True


def upgrade() -> None:
    """Create the seven monitor_* tables with their indexes."""
    op.create_table(
        "monitor_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("door", sa.String(length=8), nullable=False),
        sa.Column("source_key", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=True),
        sa.Column("accession_hash", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("sentences", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("matched_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_key"),
    )
    op.create_index("ix_monitor_reports_study", "monitor_reports", ["study_uid"])
    op.create_index("ix_monitor_reports_accession", "monitor_reports", ["accession_hash"])
    op.create_index("ix_monitor_reports_received", "monitor_reports", ["received_at"])
    op.create_table(
        "monitor_observations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_version", sa.Integer(), nullable=False),
        sa.Column("accession_hash", sa.String(length=64), nullable=True),
        sa.Column("rule", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("observed_at", sa.Float(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("institution", sa.String(length=128), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("n_findings", sa.Integer(), nullable=False),
        sa.Column("endpoint_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_index("ix_monitor_observations_study", "monitor_observations", ["study_uid"])
    op.create_index("ix_monitor_observations_accession", "monitor_observations", ["accession_hash"])
    op.create_index("ix_monitor_observations_time", "monitor_observations", ["model", "observed_at"])
    op.create_table(
        "monitor_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_calls_time", "monitor_calls", ["model", "at"])
    op.create_table(
        "monitor_baselines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("pinned_at", sa.Float(), nullable=False),
        sa.Column("pinned_by", sa.String(length=128), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=True),
        sa.Column("embeddings", sa.LargeBinary(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_baselines_model", "monitor_baselines", ["model", "model_version", "active"])
    op.create_table(
        "monitor_drift",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("test", sa.String(length=96), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("n_baseline", sa.Integer(), nullable=False),
        sa.Column("n_window", sa.Integer(), nullable=False),
        sa.Column("statistic", sa.Float(), nullable=False),
        sa.Column("effect", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=False),
        sa.Column("p_adjusted", sa.Float(), nullable=False),
        sa.Column("significant", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_drift_time", "monitor_drift", ["evaluated_at"])
    op.create_table(
        "monitor_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("raised_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
        sa.Column("cleared_at", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_alerts_open", "monitor_alerts", ["key", "cleared_at"])
    op.create_table(
        "monitor_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("monitor_state")
    op.drop_index("ix_monitor_alerts_open", table_name="monitor_alerts")
    op.drop_table("monitor_alerts")
    op.drop_index("ix_monitor_drift_time", table_name="monitor_drift")
    op.drop_table("monitor_drift")
    op.drop_index("ix_monitor_baselines_model", table_name="monitor_baselines")
    op.drop_table("monitor_baselines")
    op.drop_index("ix_monitor_calls_time", table_name="monitor_calls")
    op.drop_table("monitor_calls")
    op.drop_index("ix_monitor_observations_time", table_name="monitor_observations")
    op.drop_index("ix_monitor_observations_accession", table_name="monitor_observations")
    op.drop_index("ix_monitor_observations_study", table_name="monitor_observations")
    op.drop_table("monitor_observations")
    op.drop_index("ix_monitor_reports_received", table_name="monitor_reports")
    op.drop_index("ix_monitor_reports_accession", table_name="monitor_reports")
    op.drop_index("ix_monitor_reports_study", table_name="monitor_reports")
    op.drop_table("monitor_reports")
