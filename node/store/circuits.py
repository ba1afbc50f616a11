"""Circuits: one row per endpoint that is down or throttled, so its jobs wait together instead of one by one.

Part of :class:`node.store.state.Store`; the policy (what opens a circuit, how long it stays open) is
:mod:`node.flow.circuit`. The state lives in the database, not in a process: every worker thread, a restarted
worker and a second worker process see the same circuit. A closed circuit has no row.

``open``: no call to the endpoint until ``retry_at``; then the first job to ask becomes the probe and the circuit
is ``half_open``: only that job calls. Its success closes the circuit (the row goes), its failure opens it again.
A probe whose job lost its lease (its worker died) is taken over by the next job that asks.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import and_, case, delete, insert, or_, select, update
from sqlalchemy.engine import Engine

from node.store.conflicts import retry_on_conflict
from node.store.schema import circuits, jobs, now


class CircuitsPart:
    """Per-endpoint circuits: admit a call, record a failure or a success, the backlog to drain."""

    engine: Engine

    def circuit(self, endpoint: str) -> dict[str, Any] | None:
        """The circuit row of ``endpoint``; None when it is closed."""
        with self.engine.connect() as conn:
            row = conn.execute(select(circuits).where(circuits.c.endpoint == endpoint)).mappings().first()
            return dict(row) if row else None

    def circuits(self) -> list[dict[str, Any]]:
        """Every circuit that is not closed."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(circuits).order_by(circuits.c.endpoint)).mappings()]

    def circuit_admit(self, endpoint: str, job_id: int) -> tuple[str, dict[str, Any] | None]:
        """May job ``job_id`` call ``endpoint`` now? ``("call", None)`` (closed), ``("probe", row)`` (this job is the
        half-open probe) or ``("wait", row)`` (open, or another job probes)."""
        if self.circuit(endpoint) is None:  # the common case: a read, not the write lock
            return "call", None
        t = now()
        with self.engine.begin() as conn:
            row = conn.execute(select(circuits).where(circuits.c.endpoint == endpoint)).mappings().first()
            if row is None:
                return "call", None
            row = dict(row)
            if row["state"] == "half_open":
                if row["probe_job"] == job_id:
                    return "probe", row
                alive = conn.execute(select(jobs.c.id).where(and_(
                    jobs.c.id == row["probe_job"], jobs.c.state == "running", jobs.c.lease_until >= t))).first()
                if alive is not None:
                    return "wait", row
            elif row["retry_at"] > t:
                return "wait", row
            conn.execute(update(circuits).where(circuits.c.endpoint == endpoint)
                         .values(state="half_open", probe_job=job_id, updated_at=t))
            row.update(state="half_open", probe_job=job_id)
            return "probe", row

    @retry_on_conflict  # two first failures at once on PostgreSQL: the second one finds the circuit open
    def circuit_failed(self, endpoint: str, job_id: int, *, delay_for: Any, retry_after: float | None,
                       reason: str) -> dict[str, Any]:
        """Open (or re-open) the circuit after a failed call of job ``job_id``; returns the row.

        ``delay_for(failures)``: seconds until the next probe after that many consecutive failures (used when the
        endpoint sent no ``Retry-After``). Only the call that found the circuit closed, or the probe, counts as a
        failure: jobs already in flight when it opened fail too, but they say nothing new about the endpoint.
        """
        t = now()
        with self.engine.begin() as conn:
            row = conn.execute(select(circuits).where(circuits.c.endpoint == endpoint)).mappings().first()
            if row is None or row["probe_job"] == job_id:
                failures = 1 if row is None else int(row["failures"]) + 1
                wait = retry_after if retry_after is not None else float(delay_for(failures))
                values = {"state": "open", "retry_at": t + wait, "failures": failures, "probe_job": None,
                          "reason": reason, "updated_at": t}
                if row is None:
                    conn.execute(insert(circuits).values(endpoint=endpoint, opened_at=t, **values))
                else:
                    conn.execute(update(circuits).where(circuits.c.endpoint == endpoint).values(**values))
            elif retry_after is not None and t + retry_after > row["retry_at"]:
                conn.execute(update(circuits).where(circuits.c.endpoint == endpoint)
                             .values(retry_at=t + retry_after, reason=reason, updated_at=t))
            return dict(conn.execute(select(circuits).where(circuits.c.endpoint == endpoint)).mappings().one())

    def circuit_succeeded(self, endpoint: str) -> bool:
        """Close the circuit of ``endpoint``; True when it was open (its backlog may drain now)."""
        with self.engine.begin() as conn:
            return conn.execute(delete(circuits).where(circuits.c.endpoint == endpoint)).rowcount > 0

    def circuit_probe_now(self, endpoints: Iterable[str]) -> None:
        """Let the next job of these endpoints probe at once (``dicom-node retry --jobs``)."""
        names = list(endpoints)
        if names:
            with self.engine.begin() as conn:
                conn.execute(update(circuits).where(and_(circuits.c.endpoint.in_(names), circuits.c.state == "open"))
                             .values(retry_at=now()))

    def endpoint_backlog(self, endpoint: str, urgent_rules: Iterable[str] = ()) -> list[int]:
        """Pending jobs of ``endpoint`` in the order they should run: urgent rules first, then oldest first."""
        urgent = list(urgent_rules)
        rank = case((jobs.c.rule_name.in_(urgent), 0), else_=1) if urgent else None
        q = select(jobs.c.id).where(and_(jobs.c.endpoint == endpoint, jobs.c.state == "pending"))
        order = [jobs.c.created_at, jobs.c.id] if rank is None else [rank, jobs.c.created_at, jobs.c.id]
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q.order_by(*order))]

    def circuits_due_probe(self) -> list[str]:
        """Endpoints whose circuit lets a probe go now and has none running (its probe's worker died)."""
        t = now()
        alive = select(jobs.c.id).where(and_(jobs.c.id == circuits.c.probe_job, jobs.c.state == "running",
                                             jobs.c.lease_until >= t)).exists()
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(circuits.c.endpoint).where(or_(
                and_(circuits.c.state == "open", circuits.c.retry_at <= t),
                and_(circuits.c.state == "half_open", ~alive))))]
