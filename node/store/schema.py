"""The node's database: the source of truth for every instance, study, job, result and outbox row.

SQLAlchemy Core, so that the same schema runs on SQLite (the embedded default: WAL mode, full sync) and on
PostgreSQL. Work queues (Huey) only carry row ids; a restart resumes from these tables.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("series_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("calling_ae", String(16), nullable=False, default=""),
    Column("received_at", Float, nullable=False),
    Column("is_prior", Boolean, nullable=False, default=False),
)

studies = Table(
    "studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    # receiving -> complete (jobs created) -> done / failed; a late instance sets it back to receiving
    Column("state", String(16), nullable=False),
    Column("version", Integer, nullable=False, default=0),  # how many times the study was decided
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("check_due_at", Float),  # when the quiet-timer check is scheduled; NULL when none is pending
    Column("completed_at", Float),
    Column("is_prior", Boolean, nullable=False, default=False),
    Column("note", Text),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_uid", String(64), nullable=False, unique=True),  # entropy for the result UIDs
    Column("study_uid", String(64), nullable=False, index=True),
    Column("study_version", Integer, nullable=False),
    Column("rule_name", String(128), nullable=False),
    Column("endpoint", String(128), nullable=False),
    Column("series_uids", Text, nullable=False),  # JSON list of the matching series
    # pending -> running -> done | failed | skipped; parked: retried past its endpoint's give_up_after_seconds
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(128)),
    Column("lease_until", Float),
    Column("next_attempt_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("outcome", Text),  # a short human sentence: what happened (never PHI)
    Column("endpoint_seconds", Float),
    # set at the job's first failed (or circuit-deferred) attempt: past it, the next failure parks the job
    Column("give_up_at", Float),
    UniqueConstraint("study_uid", "rule_name", "study_version", name="uq_job_study_rule_version"),
)

# One row per endpoint whose circuit is not closed (node/flow/circuit.py): shared by every worker thread and
# process through the database, so a restarted worker keeps waiting for the endpoint instead of hammering it.
circuits = Table(
    "circuits",
    metadata,
    Column("endpoint", String(128), primary_key=True),
    Column("state", String(16), nullable=False),  # open | half_open (closed = no row)
    Column("opened_at", Float, nullable=False),
    Column("retry_at", Float, nullable=False),  # open: when the next probe may go
    Column("failures", Integer, nullable=False),  # consecutive failed calls (the backoff's exponent)
    Column("probe_job", Integer),  # half_open: the one job allowed to call the endpoint
    Column("reason", Text),
    Column("updated_at", Float, nullable=False),
)

results = Table(
    "results",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("series_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # sr | gsps | seg
    Column("path", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_uid", String(64), ForeignKey("results.sop_instance_uid"), nullable=False),
    Column("destination", String(128), nullable=False),
    # pending -> delivered | parked; with Storage Commitment: pending -> acknowledged -> committed, and a send
    # that may have reached the PACS unseen is asked about first: pending (in_flight) -> verifying -> committed
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", Float),
    Column("last_status", String(32)),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
    # A C-STORE was (or may have been) put on the wire and its answer not seen: ask the PACS before resending.
    Column("in_flight", Boolean, nullable=False, default=False, server_default="0"),
    Column("commit_txn", String(64)),  # Transaction UID of the Storage Commitment request awaiting its report
    Column("commit_requested_at", Float),
    UniqueConstraint("result_uid", "destination", name="uq_outbox_result_destination"),
)
Index("ix_outbox_due", outbox.c.destination, outbox.c.state, outbox.c.next_attempt_at)
Index("ix_outbox_commit_txn", outbox.c.commit_txn)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("sop_instance_uid", String(64)),
    Column("calling_ae", String(16)),
    Column("received_at", Float, nullable=False),
)

# Prior lookups (node/priors.py): one row per lookup for a current study. ``prior_study_uid`` is written before
# the retrieve starts, so that instances of that study arriving through the SCP are recorded as priors.
priors = Table(
    "priors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("for_study_uid", String(64), nullable=False, index=True),
    Column("prior_study_uid", String(64), index=True),
    # querying -> retrieving -> found | none | timeout | error
    Column("state", String(16), nullable=False),
    Column("outcome", Text),  # a short human sentence (never PHI)
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("seconds", Float),
)


# MedImageInsight (node/embeddings.py) ------------------------------------------------------------------
# Image embeddings: float32 little-endian bytes. Kept after the study's spool is purged (similar-case search
# looks for old cases); node/similar.py mirrors them into a memory-mapped matrix, appending by id.
embeddings = Table(
    "embeddings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("sop_instance_uid", "model_name", "model_version", name="uq_embedding_instance_model"),
)

# The winning zero-shot label per image and label set (rules with `classified:` match on these).
classifications = Table(
    "classifications",
    metadata,
    Column("sop_instance_uid", String(64), primary_key=True),
    Column("label_set", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("series_uid", String(64), nullable=False),
    Column("label", Text, nullable=False),
    Column("probability", Float, nullable=False),
    Column("probabilities", Text, nullable=False),  # JSON {label: p}
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("rule_name", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Cache of label text embeddings, per endpoint and model version.
text_embeddings = Table(
    "text_embeddings",
    metadata,
    Column("endpoint", String(128), primary_key=True),
    Column("model_version", String(128), primary_key=True),
    Column("text", String(512), primary_key=True),
    Column("vector", LargeBinary, nullable=False),
    Column("scaling_factor", Float),
    Column("created_at", Float, nullable=False),
)

#: The position of each polled source (the Azure DICOM service's change feed) and its health, for status.
source_offsets = Table(
    "source_offsets",
    metadata,
    Column("source", String(200), primary_key=True),
    Column("feed_offset", BigInteger, nullable=False, default=0),  # change-feed entries consumed (v2 offset)
    Column("last_sequence", BigInteger, nullable=False, default=0),  # Sequence of the last entry consumed
    Column("ingested", Integer, nullable=False, default=0),  # instances fetched and recorded
    Column("updated_at", Float, nullable=False),
    Column("failures", Integer, nullable=False, default=0),  # consecutive failed polls
    Column("last_error", Text),
    Column("next_poll_at", Float),
)

#: Rolling upgrades (node/store/compat.py): one row, written by the node that last upgraded the schema: the
#: revision it left and the oldest revision whose code may still use the database (the compatibility floor).
schema_compat = Table(
    "schema_compat",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", String(64), nullable=False),
    Column("compatible_from", String(64), nullable=False),
    Column("written_at", Float, nullable=False),
)


def _sqlite_pragmas(synchronous: str):
    def on_connect(dbapi_connection, _record) -> None:  # pragma: no cover - exercised through every test
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()
        # pysqlite's own transaction handling is turned off so that "begin" below controls it.
        dbapi_connection.isolation_level = None

    return on_connect


def _begin_immediate(conn) -> None:
    # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when another writer got
    # there first (busy_timeout does not apply to the lock upgrade). Taking the write lock up front serialises
    # writers cleanly, which matters when several associations deliver the same study at once.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for ``url``; SQLite files are created with owner-only permissions in WAL mode."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=20, max_overflow=20)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        event.listen(engine, "begin", _begin_immediate)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def ensure_schema(engine: Engine) -> str:
    """Create or upgrade the schema to the newest migration revision (see :mod:`node.store.migrate`).

    The tables above are what the migrations in ``node/store/migrations/versions`` build: a change here needs
    a new revision there (``tests/test_migrations.py`` compares the two).
    """
    from node.store.migrate import ensure_schema as upgrade  # Alembic's env.py imports this module

    return upgrade(engine)


create_schema = ensure_schema  # the name before migrations; idempotent as it was


def now() -> float:
    return time.time()


from node.store.schema_hl7 import hl7_tables  # noqa: E402  (Hospital IT: node/hl7)
hl7_messages, hl7_orders = hl7_tables(metadata)
from node.store.schema_sso import sso_tables  # noqa: E402  (sign-outs of the HTTP side: node/http/sso.py)
(http_sessions_ended,) = sso_tables(metadata)
from node.store.schema_workflow import define as _workflow_tables  # noqa: E402  (node/store/schema_workflow.py)
study_notices, notice_refs, decisions, ups_workitems = _workflow_tables(metadata)
from node.store.schema_monitoring import monitoring_tables  # noqa: E402  (monitoring: node/monitoring)
monitoring = monitoring_tables(metadata)
