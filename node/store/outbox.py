"""The outbox: one row per (result, destination), leased in batches by the sender and settled per attempt.

Part of :class:`node.store.state.Store`. Rows are created with their result in
:meth:`node.store.jobs.JobsPart.finish_job`, in the same transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Engine

from node.store.compat import SchemaGuard
from node.store.schema import now, outbox, results


class OutboxPart:
    """Outbox rows: claim, settle, retry parked, due destinations."""

    engine: Engine
    schema_guard: SchemaGuard

    def claim_outbox(self, destination: str, owner: str, lease_seconds: float, limit: int = 64) -> list[dict[str, Any]]:
        """Lease the due pending rows of one destination (with the result file each one sends).

        Each row comes with ``verify_first``: a previous send of it may have reached the PACS unseen (its
        lease was taken and never settled, or its C-STORE got no answer). Claiming marks every row in flight
        until it is settled.
        """
        self.schema_guard.check()
        t = now()
        token = f"{owner}:{uuid.uuid4().hex[:8]}"
        with self.engine.begin() as conn:
            due = select(outbox.c.id, outbox.c.in_flight).where(and_(
                outbox.c.destination == destination, outbox.c.state == "pending",
                outbox.c.next_attempt_at <= t,
                or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < t))).order_by(outbox.c.id).limit(limit)
            # PostgreSQL: senders claiming at once take different rows (SKIP LOCKED) instead of all waiting for the
            # first one's rows and then finding them leased; SQLite renders no FOR UPDATE (its writers take turns).
            due = due.with_for_update(skip_locked=True)
            was_in_flight = {r[0]: bool(r[1]) for r in conn.execute(due)}
            if not was_in_flight:
                return []
            # the state again: on PostgreSQL (READ COMMITTED) another node may have claimed, sent and settled a row
            # between the read above and this update, which then sees the settled row (no lease) and would take it
            conn.execute(update(outbox).where(and_(outbox.c.id.in_(list(was_in_flight)), outbox.c.state == "pending",
                                                   or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < t)))
                .values(lease_owner=token, lease_until=t + lease_seconds, attempts=outbox.c.attempts + 1,
                        in_flight=True))
            rows = conn.execute(
                select(outbox, results.c.path, results.c.sop_class_uid, results.c.study_uid)
                .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                .where(outbox.c.lease_owner == token)).mappings()
            return [dict(r, verify_first=was_in_flight[r["id"]]) for r in rows]

    def renew_outbox_lease(self, lease_token: str, lease_seconds: float) -> int:
        """Extend the lease of every row of one claimed batch (its heartbeat); returns how many rows it holds."""
        with self.engine.begin() as conn:
            return conn.execute(update(outbox).where(and_(outbox.c.lease_owner == lease_token,
                                                          outbox.c.state == "pending"))
                                .values(lease_until=now() + lease_seconds)).rowcount

    def settle_outbox(self, row_id: int, lease_token: str, *, state: str, status: str | None,
                      error: str | None = None, retry_at: float | None = None, in_flight: bool = False,
                      commit_txn: str | None = None, commit_due_at: float | None = None) -> None:
        """Record one send attempt: delivered, parked, pending again at ``retry_at``, or waiting for the PACS.

        ``in_flight``: the attempt may have reached the PACS (a C-STORE without an answer), so the next one
        asks first. ``acknowledged`` (stored, commitment asked) and ``verifying`` (commitment asked about an
        unseen send) carry ``commit_txn``; ``commit_due_at`` is when to ask again without a report.
        """
        t = now()
        values: dict[str, Any] = {"state": state, "last_status": status, "error": error, "lease_owner": None,
                                  "lease_until": None, "in_flight": in_flight}
        if state in ("delivered", "committed"):
            values["delivered_at"] = t
        if state in ("acknowledged", "verifying"):
            values.update(commit_txn=commit_txn, commit_requested_at=t, next_attempt_at=commit_due_at or t)
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        with self.engine.begin() as conn:
            conn.execute(update(outbox).where(and_(outbox.c.id == row_id, outbox.c.lease_owner == lease_token,
                                                   outbox.c.state == "pending")).values(**values))

    def claim_overdue_commitments(self, destination: str, next_due_at: float) -> list[dict[str, Any]]:
        """Rows waiting for a commitment report that is overdue; they are due again at ``next_due_at``."""
        t = now()
        with self.engine.begin() as conn:
            ids = [r[0] for r in conn.execute(select(outbox.c.id).where(and_(
                outbox.c.destination == destination, outbox.c.state.in_(["acknowledged", "verifying"]),
                outbox.c.next_attempt_at <= t)))]
            if not ids:
                return []
            conn.execute(update(outbox).where(and_(outbox.c.id.in_(ids), outbox.c.next_attempt_at <= t))
                         .values(next_attempt_at=next_due_at, attempts=outbox.c.attempts + 1))
            rows = conn.execute(select(outbox, results.c.path, results.c.sop_class_uid, results.c.study_uid)
                                .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                                .where(outbox.c.id.in_(ids))).mappings()
            return [dict(r) for r in rows]

    def set_commit_txn(self, row_ids: list[int], commit_txn: str) -> None:
        """Name the Storage Commitment transaction that now asks about these rows."""
        with self.engine.begin() as conn:
            conn.execute(update(outbox).where(and_(outbox.c.id.in_(row_ids), outbox.c.state.in_(
                ["acknowledged", "verifying"]))).values(commit_txn=commit_txn, commit_requested_at=now()))

    def record_commitment(self, transaction_uid: str, committed: list[str], failed: list[str]) -> tuple[int, int]:
        """Apply a Storage Commitment report: committed rows are delivered; failed ones are sent again now.

        Only rows still waiting on this transaction change (a late report of an older request is ignored).
        Returns (committed, to resend).
        """
        t = now()
        waiting = and_(outbox.c.commit_txn == transaction_uid, outbox.c.state.in_(["acknowledged", "verifying"]))
        with self.engine.begin() as conn:
            done = conn.execute(update(outbox).where(and_(waiting, outbox.c.result_uid.in_(committed))).values(
                state="committed", delivered_at=t, commit_txn=None, in_flight=False, error=None)).rowcount
            again = conn.execute(update(outbox).where(and_(waiting, outbox.c.result_uid.in_(failed))).values(
                state="pending", next_attempt_at=t, commit_txn=None, in_flight=False,
                error="the PACS reported it did not commit this result")).rowcount
        return done, again

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
        """Destinations with pending rows (or commitment reports to ask again) and the earliest time one is due."""
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(
                select(outbox.c.destination, func.min(outbox.c.next_attempt_at))
                .where(outbox.c.state.in_(["pending", "acknowledged", "verifying"]))
                .group_by(outbox.c.destination))]
