"""Tables of the hospital workflow (docs/study-completion.md: completion and AIW-I), defined on the one ``metadata`` of
:mod:`node.store.schema`, which calls :func:`define` (this module imports nothing of the node, so there is no
import cycle) and exports the tables like its own. Revision ``0008_workflow`` creates them.

- ``study_notices``: every MPPS (N-CREATE, N-SET) and IAN the node's SCPs took, one row per (message instance,
  study it names), written and committed before the DIMSE response;
- ``notice_refs``: the instances each of them lists (Performed Series Sequence > Referenced Image Sequence and
  Referenced Non-Image Composite SOP Instance Sequence; the IAN's Referenced SOP Sequence);
- ``decisions``: which trigger decided each study version, when, and how long after its last instance;
- ``ups_workitems``: the UPS-RS workitems this node claimed, with their Transaction UID (the lock PS3.4 CC.2.1.2
  tells a performer to keep in non-volatile storage) and how far the node got with each.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text


def define(metadata: MetaData) -> tuple[Table, Table, Table, Table]:
    """Define the tables on ``metadata``: (study_notices, notice_refs, decisions, ups_workitems)."""
    study_notices = Table(
        "study_notices",
        metadata,
        Column("uid", String(64), primary_key=True),  # SOP Instance UID of the MPPS or the IAN
        Column("study_uid", String(64), primary_key=True),
        Column("kind", String(8), nullable=False),  # mpps | ian
        # mpps: IN PROGRESS -> COMPLETED | DISCONTINUED; ian: AVAILABLE
        Column("state", String(16), nullable=False),
        Column("calling_ae", String(16)),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("dataset", Text),  # the MPPS as DICOM JSON, N-SETs merged in (PHI: never logged)
    )
    Index("ix_study_notices_study", study_notices.c.study_uid)

    notice_refs = Table(
        "notice_refs",
        metadata,
        Column("notice_uid", String(64), primary_key=True),
        Column("sop_instance_uid", String(64), primary_key=True),
        Column("sop_class_uid", String(64)),
        Column("series_uid", String(64)),
    )

    decisions = Table(
        "decisions",
        metadata,
        Column("study_uid", String(64), primary_key=True),
        Column("version", Integer, primary_key=True),
        Column("trigger", String(16), nullable=False),  # mpps | ian | expected | timer | max_wait | ups
        Column("decided_at", Float, nullable=False),
        Column("last_instance_at", Float),
        Column("detail", Text),  # a short sentence (never PHI)
        Column("rules", Text),  # JSON list of the rules this version runs; NULL: every rule that matches
        Column("discontinued", Boolean, nullable=False, default=False),  # an MPPS of the study was DISCONTINUED
    )

    ups_workitems = Table(
        "ups_workitems",
        metadata,
        Column("workitem_uid", String(64), primary_key=True),
        Column("source", String(200), nullable=False),
        Column("transaction_uid", String(64), nullable=False),
        # claiming -> claimed -> running -> completing -> completed; -> canceling -> canceled; lost (claimed elsewhere)
        Column("state", String(16), nullable=False),
        Column("rule_name", String(128)),
        Column("study_uid", String(64)),
        Column("study_version", Integer),
        Column("job_id", Integer),
        Column("lease_owner", String(128)),
        Column("lease_until", Float),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_attempt_at", Float),
        Column("reason", Text),  # why it was canceled, or the last error (never PHI)
        Column("started_at", Float),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    Index("ix_ups_workitems_study", ups_workitems.c.study_uid)
    Index("ix_ups_workitems_state", ups_workitems.c.source, ups_workitems.c.state)
    return study_notices, notice_refs, decisions, ups_workitems
