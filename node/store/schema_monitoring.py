"""Tables of the monitoring side (node/monitoring): what the AI said, what the radiologists said, drift and alerts.

Defined on the one :data:`node.store.schema.metadata` by :func:`monitoring_tables`, which ``node.store.schema``
calls (this module imports nothing of the store); created by the migration ``0011_monitoring``.

No patient data: a study is named by its Study Instance UID (as in every table of the node) and its accession
number only by a hash (:func:`node.monitoring.identity.accession_hash`); a report is kept as the labels extracted
from it, its text only with ``monitoring.keep_report_text: true``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text


@dataclass(frozen=True)
class MonitoringTables:
    """The monitoring tables, by role."""

    reports: Table
    observations: Table
    calls: Table
    baselines: Table
    drift: Table
    alerts: Table
    state: Table


def monitoring_tables(metadata: MetaData) -> MonitoringTables:
    """Every monitoring table on ``metadata``."""
    return MonitoringTables(_reports(metadata), _observations(metadata), _calls(metadata), _baselines(metadata),
                            _drift(metadata), _alerts(metadata), _state(metadata))


#: One radiologist's report (the newest version per source), as labels: {finding: present|absent|uncertain}.
def _reports(metadata: MetaData) -> Table:
    table = Table(
        "monitor_reports", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("door", String(8), nullable=False),  # hl7 | fhir | dicom
        Column("source_key", String(64), nullable=False, unique=True),  # hash of the report's own identity
        Column("study_uid", String(64)),  # given by the report, or found through the accession hash
        Column("accession_hash", String(64)),
        Column("status", String(16), nullable=False),  # final | corrected | preliminary
        Column("reported_at", Float, nullable=False),
        Column("received_at", Float, nullable=False),
        Column("findings", Text, nullable=False),  # JSON {finding key: status}, named findings only
        Column("labels", Text, nullable=False),  # JSON {label set: [canonical values]}
        Column("sentences", Integer, nullable=False),
        Column("text", Text),  # only with monitoring.keep_report_text
        Column("matched_at", Float),  # when an AI result of its study was first seen
    )
    Index("ix_monitor_reports_study", table.c.study_uid)
    Index("ix_monitor_reports_accession", table.c.accession_hash)
    Index("ix_monitor_reports_received", table.c.received_at)
    return table


#: What one finished job's results say, and what went in (one row per job).
def _observations(metadata: MetaData) -> Table:
    table = Table(
        "monitor_observations", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("job_id", Integer, nullable=False, unique=True),
        Column("study_uid", String(64), nullable=False),
        Column("study_version", Integer, nullable=False),
        Column("accession_hash", String(64)),
        Column("rule", String(128), nullable=False),
        Column("endpoint", String(128), nullable=False),
        Column("model", String(64), nullable=False),  # the registry's model name (cxrreportgen ...)
        Column("model_version", String(128), nullable=False),  # from the result's Processing Algorithm item
        Column("observed_at", Float, nullable=False),
        Column("site", String(64), nullable=False),  # the calling AE title (STOW-RS, a source's name)
        Column("institution", String(128), nullable=False),
        Column("modality", String(16), nullable=False),
        Column("manufacturer", String(64), nullable=False),
        Column("inputs", Text, nullable=False),  # JSON [{manufacturer, model, kvp, photometric, spacing, view}]
        Column("findings", Text, nullable=False),  # JSON {finding key: boxes}, the findings the AI named
        Column("labels", Text, nullable=False),  # JSON {label set: [canonical values]}
        Column("n_findings", Integer, nullable=False),  # sentences / segments the result holds
        Column("endpoint_seconds", Float),
    )
    Index("ix_monitor_observations_study", table.c.study_uid)
    Index("ix_monitor_observations_accession", table.c.accession_hash)
    Index("ix_monitor_observations_time", table.c.model, table.c.observed_at)
    return table


#: Every endpoint call's end: ok (with its time), error (permanent) or transient (retried).
def _calls(metadata: MetaData) -> Table:
    table = Table(
        "monitor_calls", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("endpoint", String(128), nullable=False),
        Column("model", String(64), nullable=False),
        Column("at", Float, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("seconds", Float),
        Column("status", Integer),
    )
    Index("ix_monitor_calls_time", table.c.model, table.c.at)
    return table


#: The operator's pinned baseline per model and version: a frozen summary of a window (and an embedding sample).
def _baselines(metadata: MetaData) -> Table:
    table = Table(
        "monitor_baselines", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("model", String(64), nullable=False),
        Column("model_version", String(128), nullable=False),
        Column("window_start", Float, nullable=False),
        Column("window_end", Float, nullable=False),
        Column("pinned_at", Float, nullable=False),
        Column("pinned_by", String(128), nullable=False),
        Column("note", Text, nullable=False),
        Column("summary", Text, nullable=False),  # JSON (node/monitoring/baseline.py)
        Column("embedding_dim", Integer),
        Column("embeddings", LargeBinary),  # float32 little-endian rows, a sample of the window's
        Column("active", Boolean, nullable=False),
    )
    Index("ix_monitor_baselines_model", table.c.model, table.c.model_version, table.c.active)
    return table


#: One drift test of one evaluation (the statistics behind the charts and the alerts).
def _drift(metadata: MetaData) -> Table:
    table = Table(
        "monitor_drift", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("evaluated_at", Float, nullable=False),
        Column("model", String(64), nullable=False),
        Column("model_version", String(128), nullable=False),
        Column("test", String(96), nullable=False),  # e.g. input:manufacturer, output:rate:pneumothorax
        Column("method", String(32), nullable=False),  # chi2 | ks | mmd | proportion
        Column("window_start", Float, nullable=False),
        Column("window_end", Float, nullable=False),
        Column("n_baseline", Integer, nullable=False),
        Column("n_window", Integer, nullable=False),
        Column("statistic", Float, nullable=False),
        Column("effect", Float, nullable=False),
        Column("p_value", Float, nullable=False),
        Column("p_adjusted", Float, nullable=False),
        Column("significant", Boolean, nullable=False),
    )
    Index("ix_monitor_drift_time", table.c.evaluated_at)
    return table


#: Alerts: open while ``cleared_at`` is NULL (one open alert per key).
def _alerts(metadata: MetaData) -> Table:
    table = Table(
        "monitor_alerts", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", String(255), nullable=False),
        Column("kind", String(16), nullable=False),  # agreement | drift
        Column("raised_at", Float, nullable=False),
        Column("last_seen_at", Float, nullable=False),
        Column("cleared_at", Float),
        Column("message", Text, nullable=False),  # no PHI: finding, model, version, site, numbers
    )
    Index("ix_monitor_alerts_open", table.c.key, table.c.cleared_at)
    return table


#: Small named values: when the last evaluation ran (so that one node of a cluster evaluates at a time).
def _state(metadata: MetaData) -> Table:
    return Table(
        "monitor_state", metadata,
        Column("name", String(32), primary_key=True),
        Column("value", Float, nullable=False),
    )
