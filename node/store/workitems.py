"""UPS-RS workitems this node claimed (AIW-I Task Performer, :mod:`node.ups.performer`), one row each.

Part of :class:`node.store.state.Store`. The row is written before every call to the worklist that changes the
workitem, so that a node killed at any step resumes the same workitem with the same Transaction UID:

``claiming`` (Transaction UID chosen, claim not yet confirmed) -> ``claimed`` (IN PROGRESS at the worklist; the
inputs are being fetched) -> ``running`` (the study is decided for the workitem's rule; its job runs and its results
go out) -> ``completing`` -> ``completed``; or -> ``canceling`` -> ``canceled`` (with a reason); or ``lost`` (another
performer claimed it first). A row is worked on by one process at a time under a lease, so nodes sharing one
database never work on the same workitem at once.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from node.store.schema import jobs, now, outbox, results, studies, ups_workitems
from node.store.workflow import record_decision

ACTIVE = ("claiming", "claimed", "running", "completing", "canceling")
FINAL = ("completed", "canceled", "lost")


class WorkitemsPart:
    """The ``ups_workitems`` rows."""

    engine: Engine

    def workitem(self, workitem_uid: str) -> dict[str, Any] | None:
        """The row of one workitem, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(ups_workitems).where(ups_workitems.c.workitem_uid == workitem_uid)
                               ).mappings().first()
        return dict(row) if row else None

    def begin_claim(self, workitem_uid: str, source: str, transaction_uid: str, owner: str,
                    lease_seconds: float, rule_name: str) -> bool:
        """Record the Transaction UID before asking for the claim; False when the workitem has a row already."""
        t = now()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(ups_workitems).values(
                    workitem_uid=workitem_uid, source=source, transaction_uid=transaction_uid, state="claiming",
                    rule_name=rule_name,
                    lease_owner=owner, lease_until=t + lease_seconds, attempts=0, next_attempt_at=t,
                    created_at=t, updated_at=t))
        except IntegrityError:
            return False
        return True

    def take_workitems(self, source: str, owner: str, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease the unfinished workitems of ``source`` that are due and free (or already this owner's)."""
        t = now()
        with self.engine.begin() as conn:
            free = or_(ups_workitems.c.lease_owner.is_(None), ups_workitems.c.lease_until < t,
                       ups_workitems.c.lease_owner == owner)
            due = or_(ups_workitems.c.next_attempt_at.is_(None), ups_workitems.c.next_attempt_at <= t)
            where = and_(ups_workitems.c.source == source, ups_workitems.c.state.in_(ACTIVE), free, due)
            uids = [r[0] for r in conn.execute(select(ups_workitems.c.workitem_uid).where(where))]
            if not uids:
                return []
            conn.execute(update(ups_workitems).where(and_(ups_workitems.c.workitem_uid.in_(uids), free))
                         .values(lease_owner=owner, lease_until=t + lease_seconds))
            return [dict(r) for r in conn.execute(select(ups_workitems).where(and_(
                ups_workitems.c.workitem_uid.in_(uids), ups_workitems.c.lease_owner == owner))).mappings()]

    def update_workitem(self, workitem_uid: str, owner: str, **values: Any) -> bool:
        """Change the row of a workitem this owner leases; False when the lease was lost."""
        values["updated_at"] = now()
        with self.engine.begin() as conn:
            return conn.execute(update(ups_workitems).where(and_(
                ups_workitems.c.workitem_uid == workitem_uid, ups_workitems.c.lease_owner == owner))
                .values(**values)).rowcount == 1

    def release_workitems(self, owner: str) -> None:
        """Drop this owner's leases (a clean stop): another process may go on at once."""
        with self.engine.begin() as conn:
            conn.execute(update(ups_workitems).where(ups_workitems.c.lease_owner == owner)
                         .values(lease_owner=None, lease_until=None))

    def decide_for_workitem(self, workitem_uid: str, owner: str, study_uid: str, rule: str) -> int | None:
        """Close the study for the workitem's rule (a new version, trigger ``ups``) and mark the workitem running.

        Idempotent: a workitem that already has its version gets it back. None when the study has no instance.
        """
        t = now()
        with self.engine.begin() as conn:
            item = conn.execute(select(ups_workitems).where(and_(
                ups_workitems.c.workitem_uid == workitem_uid, ups_workitems.c.lease_owner == owner))
            ).mappings().first()
            if item is None:
                return None
            if item["study_version"] is not None:
                return int(item["study_version"])
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
            if row is None:
                return None
            version = int(row["version"]) + 1
            conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(
                state="complete", version=version, completed_at=t, check_due_at=None,
                note=f"decided for UPS workitem {workitem_uid}"))
            record_decision(conn, study_uid, version, "ups", t, row["last_received_at"],
                            f"UPS workitem {workitem_uid}: rule {rule}", [rule], False)
            conn.execute(update(ups_workitems).where(ups_workitems.c.workitem_uid == workitem_uid).values(
                study_uid=study_uid, study_version=version, state="running", updated_at=t))
            return version

    def job_outcome(self, job_id: int) -> dict[str, Any] | None:
        """A job's state and outcome, and its results with where each went (destination -> outbox state)."""
        with self.engine.connect() as conn:
            job = conn.execute(select(jobs.c.id, jobs.c.state, jobs.c.outcome, jobs.c.study_uid,
                                      jobs.c.rule_name, jobs.c.created_at, jobs.c.updated_at)
                               .where(jobs.c.id == job_id)).mappings().first()
            if job is None:
                return None
            rows = conn.execute(select(results.c.sop_instance_uid, results.c.sop_class_uid, results.c.series_uid,
                                       results.c.kind, outbox.c.destination, outbox.c.state)
                                .outerjoin(outbox, outbox.c.result_uid == results.c.sop_instance_uid)
                                .where(results.c.job_id == job_id)).mappings().all()
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            res = out.setdefault(r["sop_instance_uid"], {"sop_instance_uid": r["sop_instance_uid"],
                                                         "sop_class_uid": r["sop_class_uid"],
                                                         "series_uid": r["series_uid"], "kind": r["kind"],
                                                         "sent": {}})
            if r["destination"] is not None:
                res["sent"][r["destination"]] = r["state"]
        return {**dict(job), "results": list(out.values())}

    def workitems(self, limit: int = 50, states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The newest workitem rows (status)."""
        q = select(ups_workitems).order_by(ups_workitems.c.updated_at.desc()).limit(limit)
        if states:
            q = q.where(ups_workitems.c.state.in_(list(states)))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def workitem_counts(self) -> dict[str, int]:
        """Workitem rows per state."""
        with self.engine.connect() as conn:
            return {k: v for k, v in conn.execute(select(ups_workitems.c.state, func.count())
                                                  .group_by(ups_workitems.c.state))}

    def workitems_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The workitems that worked on a study (study page)."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(ups_workitems).where(
                ups_workitems.c.study_uid == study_uid).order_by(ups_workitems.c.created_at)).mappings()]
