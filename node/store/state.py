"""The node's database as the operations its roles need: :class:`Store`, on top of :mod:`node.store.schema`.

Every method is one short transaction. Work is claimed with a lease (owner + expiry) so that a task delivered
twice, or a worker killed mid-task, never does the same work twice at once, and a sweep can hand expired
leases to another worker.

``Store`` is one facade over small parts, one job each:

- :mod:`node.store.studies`: instances, studies, quarantine, decisions (and :class:`InstanceRecord`);
- :mod:`node.store.priors`: prior lookups, and how instances of an expected prior are recorded;
- :mod:`node.store.jobs`: jobs, waiting jobs, results of earlier study versions;
- :mod:`node.store.outbox`: outbox rows (claim, renew, settle, retry parked, due destinations);
- :mod:`node.store.circuits`: per-endpoint circuits (an endpoint down or throttled), the backlog to drain;
- :mod:`node.store.upkeep`: lease recovery, the sweep's stale work, retention, the status summary;
- :mod:`node.store.revisions`: a study's results and where they went, rejection notes, re-run versions;
- :mod:`node.store.hl7`: HL7 v2 messages and orders taken by the MLLP listener (node/hl7), their retention;
- :mod:`node.store.workflow`: MPPS and IAN received, the decision transaction, decision records;
- :mod:`node.store.workitems`: UPS-RS workitems this node claimed (AIW-I);
- :mod:`node.store.monitoring`: radiologists' reports, AI observations, baselines, drift, alerts (node/monitoring).

Opening a store checks the schema revision (:func:`node.store.schema.ensure_schema`); while it is open, the
methods that take work (new instances, job and outbox claims, job creation) re-check it every few seconds
(:class:`node.store.compat.SchemaGuard`) and raise :class:`node.store.compat.IncompatibleSchema` once a newer node
upgraded the database past what this code can use.
"""

from __future__ import annotations

import os
import uuid

from sqlalchemy.engine import Engine

from node.store import schema as db
from node.store.circuits import CircuitsPart
from node.store.hl7 import HospitalItPart
from node.store.jobs import JobsPart
from node.store.migrate import schema_guard
from node.store.monitoring import MonitoringPart
from node.store.outbox import OutboxPart
from node.store.priors import PriorsPart
from node.store.records import InstanceRecord
from node.store.revisions import RevisionsPart
from node.store.studies import StudiesPart
from node.store.upkeep import UpkeepPart
from node.store.workflow import WorkflowPart
from node.store.workitems import WorkitemsPart

__all__ = ["InstanceRecord", "Store", "lease_owner"]


def lease_owner(instance_id: str) -> str:
    """This process as a lease owner: ``instance:pid:random`` (the random part tells restarts apart)."""
    return f"{instance_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Store(StudiesPart, PriorsPart, JobsPart, CircuitsPart, UpkeepPart, OutboxPart, RevisionsPart, HospitalItPart,
            WorkflowPart, WorkitemsPart, MonitoringPart):
    """The node's database, as the operations the roles need."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Rolling upgrades: claims and new instances stop once a newer node made the schema unusable to this code.
        self.schema_guard = schema_guard(engine)

    @classmethod
    def open(cls, url: str, *, sqlite_synchronous: str = "FULL") -> "Store":
        """An engine for ``url``, its schema created or upgraded to the newest revision (:mod:`node.store.migrate`)."""
        engine = db.make_engine(url, sqlite_synchronous=sqlite_synchronous)
        db.ensure_schema(engine)
        return cls(engine)
