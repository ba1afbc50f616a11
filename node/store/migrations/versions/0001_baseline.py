"""Baseline: the schema as node/store/schema.py defined it when migrations were introduced (commit 35e38db+).

Every table and index explicitly, as ``metadata.create_all`` made them. Each create is ``IF NOT EXISTS``: a
database made before migrations (by ``create_all``; tables, no ``alembic_version``) is adopted by this same
revision: what it has is kept as it is, what an older node never created is added, and the revision is
stamped. Never edit this file: a schema change is a new revision on top of it.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create every table and index of the baseline that does not exist yet."""
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("is_prior", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
        if_not_exists=True,
    )
    op.create_index("ix_instances_study_uid", "instances", ["study_uid"], unique=False, if_not_exists=True)

    op.create_table(
        "studies",
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("first_received_at", sa.Float(), nullable=False),
        sa.Column("last_received_at", sa.Float(), nullable=False),
        sa.Column("check_due_at", sa.Float(), nullable=True),
        sa.Column("completed_at", sa.Float(), nullable=True),
        sa.Column("is_prior", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("study_uid"),
        if_not_exists=True,
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_version", sa.Integer(), nullable=False),
        sa.Column("rule_name", sa.String(length=128), nullable=False),
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("series_uids", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("endpoint_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_uid"),
        sa.UniqueConstraint("study_uid", "rule_name", "study_version", name="uq_job_study_rule_version"),
        if_not_exists=True,
    )
    op.create_index("ix_jobs_study_uid", "jobs", ["study_uid"], unique=False, if_not_exists=True)

    op.create_table(
        "results",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
        if_not_exists=True,
    )
    op.create_index("ix_results_job_id", "results", ["job_id"], unique=False, if_not_exists=True)
    op.create_index("ix_results_study_uid", "results", ["study_uid"], unique=False, if_not_exists=True)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("result_uid", sa.String(length=64), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("last_status", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["result_uid"], ["results.sop_instance_uid"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("result_uid", "destination", name="uq_outbox_result_destination"),
        if_not_exists=True,
    )
    op.create_index("ix_outbox_due", "outbox", ["destination", "state", "next_attempt_at"], unique=False,
                    if_not_exists=True)

    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )

    op.create_table(
        "priors",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("for_study_uid", sa.String(length=64), nullable=False),
        sa.Column("prior_study_uid", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index("ix_priors_for_study_uid", "priors", ["for_study_uid"], unique=False, if_not_exists=True)
    op.create_index("ix_priors_prior_study_uid", "priors", ["prior_study_uid"], unique=False, if_not_exists=True)

    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid", "model_name", "model_version", name="uq_embedding_instance_model"),
        if_not_exists=True,
    )
    op.create_index("ix_embeddings_study_uid", "embeddings", ["study_uid"], unique=False, if_not_exists=True)

    op.create_table(
        "classifications",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("label_set", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("rule_name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid", "label_set"),
        if_not_exists=True,
    )
    op.create_index("ix_classifications_study_uid", "classifications", ["study_uid"], unique=False,
                    if_not_exists=True)

    op.create_table(
        "text_embeddings",
        sa.Column("endpoint", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("text", sa.String(length=512), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("scaling_factor", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "model_version", "text"),
        if_not_exists=True,
    )


def downgrade() -> None:
    """Drop everything (an empty database; only for development)."""
    for table in ("text_embeddings", "classifications", "embeddings", "priors", "quarantine", "outbox", "results",
                  "jobs", "studies", "instances"):
        op.drop_table(table)
