"""The outbox: one row per (result, destination), leased in batches by the sender and settled per attempt.

Part of :class:`node.store.state.Store`. Rows are created with their result in
:meth:`node.store.jobs.JobsPart.finish_job`, in the same transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Engine

from node.store.schema import now, outbox, results


class OutboxPart:
    """Outbox rows: claim, settle, retry parked, due destinations."""

    engine: Engine

    def claim_outbox(self, destination: str, owner: str, lease_seconds: float, limit: int = 64) -> list[dict[str, Any]]:
        """Lease the due pending rows of one destination (with the result file each one sends)."""
        t = now()
        token = f"{owner}:{uuid.uuid4().hex[:8]}"
        with self.engine.begin() as conn:
            due = select(outbox.c.id).where(and_(
                outbox.c.destination == destination, outbox.c.state == "pending",
                outbox.c.next_attempt_at <= t,
                or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < t))).order_by(outbox.c.id).limit(limit)
            ids = [r[0] for r in conn.execute(due)]
            if not ids:
                return []
            conn.execute(update(outbox).where(and_(outbox.c.id.in_(ids), or_(
                outbox.c.lease_until.is_(None), outbox.c.lease_until < t)))
                .values(lease_owner=token, lease_until=t + lease_seconds, attempts=outbox.c.attempts + 1))
            rows = conn.execute(
                select(outbox, results.c.path, results.c.sop_class_uid, results.c.study_uid)
                .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                .where(outbox.c.lease_owner == token)).mappings()
            return [dict(r) for r in rows]

    def renew_outbox_lease(self, lease_token: str, lease_seconds: float) -> int:
        """Extend the lease of every row of one claimed batch (its heartbeat); returns how many rows it holds."""
        with self.engine.begin() as conn:
            return conn.execute(update(outbox).where(and_(outbox.c.lease_owner == lease_token,
                                                          outbox.c.state == "pending"))
                                .values(lease_until=now() + lease_seconds)).rowcount

    def settle_outbox(self, row_id: int, lease_token: str, *, state: str, status: str | None,
                      error: str | None = None, retry_at: float | None = None) -> None:
        """Record one send attempt: delivered, parked, or pending again at ``retry_at``."""
        t = now()
        values: dict[str, Any] = {"state": state, "last_status": status, "error": error, "lease_owner": None,
                                  "lease_until": None}
        if state == "delivered":
            values["delivered_at"] = t
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        with self.engine.begin() as conn:
            conn.execute(update(outbox).where(and_(outbox.c.id == row_id, outbox.c.lease_owner == lease_token,
                                                   outbox.c.state == "pending")).values(**values))

    def retry_parked(self, destination: str | None = None) -> int:
        """Put parked rows back in the queue (``dicom-node retry``); returns how many.

        A retried row starts afresh: attempts from 0 and a new ``give_up_after_seconds`` window (``created_at``
        is when the outbox last took the row on), else a row parked for age would be parked again at once.
        """
        q = update(outbox).where(outbox.c.state == "parked")
        if destination:
            q = q.where(outbox.c.destination == destination)
        t = now()
        with self.engine.begin() as conn:
            return conn.execute(q.values(state="pending", attempts=0, next_attempt_at=t, created_at=t,
                                         lease_owner=None, lease_until=None)).rowcount

    def due_destinations(self) -> list[tuple[str, float]]:
        """Destinations with pending rows and the earliest time one of them is due."""
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(
                select(outbox.c.destination, func.min(outbox.c.next_attempt_at))
                .where(outbox.c.state == "pending").group_by(outbox.c.destination))]
