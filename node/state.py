"""State transitions of instances, studies, jobs, results and outbox rows, on top of :mod:`node.db`.

Every function here is one short transaction. Work is claimed with a lease (owner + expiry) so that a task
delivered twice, or a worker killed mid-task, never does the same work twice at once, and a sweep can hand
expired leases to another worker.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Collection, Iterable, Mapping, Sequence

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from . import db
from .db import instances, jobs, now, outbox, priors, quarantine, results, studies


def destinations_for(kind: str, destinations: Sequence[str],
                     result_kinds: Mapping[str, Collection[str]] | None) -> list[str]:
    """The destinations that receive a result of ``kind`` (``destinations.<name>.results``; all when unknown)."""
    if result_kinds is None:
        return list(destinations)
    return [d for d in destinations if d not in result_kinds or kind in result_kinds[d]]


def lease_owner(instance_id: str) -> str:
    """This process as a lease owner: ``instance:pid:random`` (the random part tells restarts apart)."""
    return f"{instance_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    calling_ae: str
    is_prior: bool = False


class Store:
    """The node's database, as the operations the roles need."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, sqlite_synchronous: str = "FULL") -> "Store":
        engine = db.make_engine(url, sqlite_synchronous=sqlite_synchronous)
        db.create_schema(engine)
        return cls(engine)

    # Receive ------------------------------------------------------------------------------------------
    def record_instances(self, records: Sequence[InstanceRecord], quiet_seconds: float) -> list[tuple[str, float]]:
        """Commit received instances in one transaction (a resend replaces the earlier row).

        Returns the studies whose quiet-timer check must be scheduled, with the time it is due.
        """
        for attempt in range(5):
            try:
                return self._record_instances(records, quiet_seconds)
            except IntegrityError:
                # Two associations created the same study row at once (PostgreSQL, READ COMMITTED): the
                # row exists now, so the next attempt takes the update path.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _record_instances(self, records: Sequence[InstanceRecord], quiet_seconds: float) -> list[tuple[str, float]]:
        t = now()
        to_schedule: dict[str, float] = {}
        # One statement per kind of row, one read and one update per study: a group commit brings many
        # records of few studies. A SOP Instance UID twice in one batch (a resend racing itself): the last wins.
        latest = list({rec.sop_instance_uid: rec for rec in records}.values())
        with self.engine.begin() as conn:
            prior_studies = {uid for uid in {rec.study_uid for rec in latest if not rec.is_prior}
                             if self._expected_prior(conn, uid)}
            own = []
            for rec in latest:
                if rec.is_prior or rec.study_uid in prior_studies:
                    self._record_prior(conn, rec, t)
                else:
                    own.append(rec)
            if not own:
                return []
            conn.execute(delete(instances).where(instances.c.sop_instance_uid.in_([r.sop_instance_uid for r in own])))
            conn.execute(insert(instances), [dict(received_at=t, **rec.__dict__) for rec in own])
            first_of_study: dict[str, InstanceRecord] = {}
            for rec in own:
                first_of_study.setdefault(rec.study_uid, rec)
            for study_uid, rec in first_of_study.items():
                row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
                due = t + quiet_seconds
                if row is None:
                    conn.execute(insert(studies).values(
                        study_uid=study_uid, state="receiving", version=0, first_received_at=t,
                        last_received_at=t, check_due_at=due, is_prior=rec.is_prior))
                    to_schedule[study_uid] = due
                else:
                    values: dict[str, Any] = {"last_received_at": t}
                    if row["state"] != "receiving":
                        values["state"] = "receiving"  # a late instance re-opens the study
                        values["note"] = f"re-opened by a new instance after version {row['version']}"
                    if row["check_due_at"] is None:
                        values["check_due_at"] = due
                        to_schedule[study_uid] = due
                    conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(**values))
        return list(to_schedule.items())

    def record_quarantine(self, path: str, reason: str, sop_instance_uid: str | None, calling_ae: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(quarantine).values(path=path, reason=reason, sop_instance_uid=sop_instance_uid,
                                                   calling_ae=calling_ae, received_at=now()))

    # Decide -------------------------------------------------------------------------------------------
    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
            return dict(row) if row else None

    def study_instances(self, study_uid: str, *, include_priors: bool = False) -> list[dict[str, Any]]:
        q = select(instances).where(instances.c.study_uid == study_uid)
        if not include_priors:
            q = q.where(instances.c.is_prior.is_(False))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(instances.c.series_uid, instances.c.received_at)).mappings()]

    def begin_decision(self, study_uid: str, quiet_seconds: float) -> tuple[str, float | int]:
        """Close a quiet study: returns ("complete", version), ("wait", due_at) or ("skip", 0)."""
        t = now()
        with self.engine.begin() as conn:
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
            if row is None or row["state"] != "receiving":
                if row is not None and row["check_due_at"] is not None:
                    conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(check_due_at=None))
                return ("skip", 0)
            due = row["last_received_at"] + quiet_seconds
            if due > t:
                conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(check_due_at=due))
                return ("wait", due)
            version = row["version"] + 1
            res = conn.execute(
                update(studies)
                .where(and_(studies.c.study_uid == study_uid, studies.c.state == "receiving",
                            studies.c.last_received_at == row["last_received_at"]))
                .values(state="complete", version=version, completed_at=t, check_due_at=None))
            if res.rowcount != 1:
                return ("wait", t + 0.5)  # an instance arrived meanwhile
            return ("complete", version)

    def create_jobs(self, study_uid: str, version: int, planned: Iterable[tuple[str, str, list[str]]],
                    waiting: Iterable[tuple[str, str, list[str]]] = ()) -> list[int]:
        """Create one pending job per (rule, endpoint, series); idempotent per (study, rule, version).

        ``waiting``: jobs of rules with ``classified:``, created in state "waiting" (node/classified.py).
        """
        ids: list[int] = []
        t = now()
        with self.engine.begin() as conn:
            for (rule_name, endpoint, series_uids), state in [*((p, "pending") for p in planned),
                                                             *((w, "waiting") for w in waiting)]:
                existing = conn.execute(select(jobs.c.id).where(and_(
                    jobs.c.study_uid == study_uid, jobs.c.rule_name == rule_name,
                    jobs.c.study_version == version))).scalar()
                if existing is not None:
                    ids.append(existing)
                    continue
                res = conn.execute(insert(jobs).values(
                    job_uid=uuid.uuid4().hex, study_uid=study_uid, study_version=version, rule_name=rule_name,
                    endpoint=endpoint, series_uids=json.dumps(series_uids), state=state, attempts=0,
                    next_attempt_at=t, created_at=t, updated_at=t))
                ids.append(int(res.inserted_primary_key[0]))
            if not ids:
                conn.execute(update(studies).where(studies.c.study_uid == study_uid)
                             .values(state="done", note="no rule matched"))
        return ids

    # Jobs ---------------------------------------------------------------------------------------------
    def claim_job(self, job_id: int, owner: str, lease_seconds: float) -> dict[str, Any] | None:
        """Take the lease of a pending (or lease-expired running) job; None when someone else has it or it is over."""
        t = now()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(and_(jobs.c.id == job_id,
                            or_(jobs.c.state == "pending",
                                and_(jobs.c.state == "running", or_(jobs.c.lease_until.is_(None),
                                                                    jobs.c.lease_until < t)))))
                .values(state="running", lease_owner=owner, lease_until=t + lease_seconds,
                        attempts=jobs.c.attempts + 1, updated_at=t))
            if res.rowcount != 1:
                return None
            return dict(conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one())

    def job(self, job_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            return dict(row) if row else None

    def release_job(self, job_id: int, owner: str, *, retry_in: float, outcome: str) -> None:
        """Give a job back for a later attempt (its lease is dropped)."""
        t = now()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.lease_owner == owner))
                         .values(state="pending", lease_owner=None, lease_until=None,
                                 next_attempt_at=t + retry_in, outcome=outcome, updated_at=t))

    def finish_job(self, job_id: int, owner: str, *, state: str, outcome: str,
                   new_results: Sequence[dict[str, Any]] = (), destinations: Sequence[str] = (),
                   endpoint_seconds: float | None = None, writes: Sequence[Any] = (),
                   result_kinds: Mapping[str, Collection[str]] | None = None) -> bool:
        """End a job; its results, their outbox rows and ``writes`` (fn(connection)) commit in one transaction.

        ``result_kinds``: destination -> the result kinds it receives (``destinations.<name>.results``); a result
        gets an outbox row only for the destinations that want its kind (all of them when None).
        """
        t = now()
        with self.engine.begin() as conn:
            res = conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.lease_owner == owner,
                                                       jobs.c.state == "running"))
                               .values(state=state, outcome=outcome, lease_owner=None, lease_until=None,
                                       updated_at=t, endpoint_seconds=endpoint_seconds))
            if res.rowcount != 1:
                return False  # the lease was lost: another worker owns the job now
            for r in new_results:
                conn.execute(delete(results).where(results.c.sop_instance_uid == r["sop_instance_uid"])
                             .where(~results.c.sop_instance_uid.in_(select(outbox.c.result_uid))))
                exists = conn.execute(select(results.c.sop_instance_uid)
                                      .where(results.c.sop_instance_uid == r["sop_instance_uid"])).first()
                if exists is None:
                    conn.execute(insert(results).values(job_id=job_id, created_at=t, **r))
                for dest in destinations_for(r["kind"], destinations, result_kinds):
                    have = conn.execute(select(outbox.c.id).where(and_(
                        outbox.c.result_uid == r["sop_instance_uid"], outbox.c.destination == dest))).first()
                    if have is None:
                        conn.execute(insert(outbox).values(result_uid=r["sop_instance_uid"], destination=dest,
                                                           state="pending", attempts=0, next_attempt_at=t,
                                                           created_at=t))
            for write in writes:
                write(conn)
            self._settle_study(conn, job_id)
        return True

    def _settle_study(self, conn, job_id: int) -> None:
        study_uid = conn.execute(select(jobs.c.study_uid).where(jobs.c.id == job_id)).scalar_one()
        row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
        if row is None or row["state"] != "complete":
            return
        open_jobs = conn.execute(select(func.count()).select_from(jobs).where(and_(
            jobs.c.study_uid == study_uid, jobs.c.study_version == row["version"],
            jobs.c.state.in_(["pending", "running", "waiting"])))).scalar_one()
        if open_jobs == 0:
            failed = conn.execute(select(func.count()).select_from(jobs).where(and_(
                jobs.c.study_uid == study_uid, jobs.c.study_version == row["version"],
                jobs.c.state == "failed"))).scalar_one()
            conn.execute(update(studies).where(studies.c.study_uid == study_uid)
                         .values(state="failed" if failed else "done"))

    def previous_result(self, study_uid: str, rule_name: str, version: int, kind: str) -> dict[str, Any] | None:
        """The newest result of ``kind`` from an earlier version of the same study and rule (for predecessors)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(results).join(jobs, results.c.job_id == jobs.c.id)
                .where(and_(jobs.c.study_uid == study_uid, jobs.c.rule_name == rule_name,
                            jobs.c.study_version < version, results.c.kind == kind))
                .order_by(jobs.c.study_version.desc())).mappings().first()
            return dict(row) if row else None

    # Classification-aware routing (node/classified.py) ------------------------------------------------
    def waiting_jobs(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        """Jobs in state "waiting" (of one study, or of every study)."""
        q = select(jobs).where(jobs.c.state == "waiting")
        if study_uid is not None:
            q = q.where(jobs.c.study_uid == study_uid)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(jobs.c.id)).mappings()]

    def open_jobs_of_rules(self, study_uid: str, version: int, rule_names: Iterable[str]) -> int:
        """How many jobs of these rules are pending or running for this study version."""
        names = list(rule_names)
        if not names:
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(jobs).where(and_(
                jobs.c.study_uid == study_uid, jobs.c.study_version == version, jobs.c.rule_name.in_(names),
                jobs.c.state.in_(["pending", "running"])))).scalar_one())

    def resolve_waiting_jobs(self, decisions: Sequence[tuple[int, str, list[str], str]]) -> list[int]:
        """Set waiting jobs to (job id, "pending" | "skipped", series, outcome); returns the ids now pending."""
        t = now()
        pending: list[int] = []
        with self.engine.begin() as conn:
            for job_id, state, series_uids, outcome in decisions:
                res = conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state == "waiting"))
                                   .values(state=state, series_uids=json.dumps(series_uids), outcome=outcome,
                                           next_attempt_at=t, updated_at=t))
                if res.rowcount == 1 and state == "pending":
                    pending.append(job_id)
            for job_id, *_ in decisions:
                self._settle_study(conn, job_id)
        return pending

    # Outbox -------------------------------------------------------------------------------------------
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

    # Recovery -----------------------------------------------------------------------------------------
    def release_leases_of(self, instance_id: str) -> int:
        """Drop every lease held by this node instance's earlier processes.

        Called by ``serve`` before it starts its workers: nothing of this instance is running then, so a lease
        still held was left by a process that died (SIGKILL, power loss) and its work resumes at once.
        """
        prefix = f"{instance_id}:"
        n = 0
        with self.engine.begin() as conn:
            n += conn.execute(update(jobs).where(and_(jobs.c.lease_owner.startswith(prefix),
                                                      jobs.c.state == "running"))
                              .values(state="pending", lease_owner=None, lease_until=None,
                                      next_attempt_at=now())).rowcount
            n += conn.execute(update(outbox).where(outbox.c.lease_owner.startswith(prefix))
                              .values(lease_owner=None, lease_until=None)).rowcount
        return n

    def receiving_not_due(self, quiet_seconds: float) -> list[tuple[str, float]]:
        """Studies still receiving whose quiet time has not passed yet, with the time their check is due."""
        t = now()
        with self.engine.connect() as conn:
            return [(r[0], r[1] + quiet_seconds) for r in conn.execute(
                select(studies.c.study_uid, studies.c.last_received_at).where(and_(
                    studies.c.state == "receiving", studies.c.last_received_at + quiet_seconds > t)))]

    def stale_work(self, quiet_seconds: float, *, fresh_start: bool = False) -> dict[str, list]:
        """What a sweep must (re-)enqueue: quiet studies, due jobs with no live lease, due destinations.

        ``fresh_start``: the worker process just started, so no pending job can be waiting in its queue from a
        task it consumed before dying (Huey delivers at most once): every due pending job is re-enqueued.
        """
        t = now()
        recent = t + 1 if fresh_start else t - 60
        with self.engine.connect() as conn:
            quiet = [r[0] for r in conn.execute(select(studies.c.study_uid).where(and_(
                studies.c.state == "receiving", studies.c.last_received_at + quiet_seconds <= t)))]
            # a pending job updated in the last minute is most likely still in the queue: leave it there
            due_jobs = [r[0] for r in conn.execute(select(jobs.c.id).where(or_(
                and_(jobs.c.state == "pending", jobs.c.next_attempt_at <= t, jobs.c.updated_at < recent),
                and_(jobs.c.state == "running", jobs.c.lease_until < t))))]
        return {"studies": quiet, "jobs": due_jobs, "destinations": [d for d, _ in self.due_destinations()]}

    # Retention --------------------------------------------------------------------------------------------
    def purge_delivered(self, older_than_seconds: float) -> int:
        """Delete spool files, result files and rows of finished studies whose results were all delivered.

        A study with a parked or pending outbox row, a job not finished, or one that is receiving again is
        kept. Quarantined files are never purged here (only by hand).
        """
        t = now()
        purged = 0
        with self.engine.connect() as conn:
            candidates = [r[0] for r in conn.execute(select(studies.c.study_uid).where(and_(
                studies.c.state.in_(["done", "failed"]), studies.c.completed_at < t - older_than_seconds)))]
        for study_uid in candidates:
            with self.engine.begin() as conn:
                open_rows = conn.execute(select(func.count()).select_from(outbox).join(
                    results, results.c.sop_instance_uid == outbox.c.result_uid).where(and_(
                        results.c.study_uid == study_uid, outbox.c.state != "delivered"))).scalar_one()
                open_jobs = conn.execute(select(func.count()).select_from(jobs).where(and_(
                    jobs.c.study_uid == study_uid, jobs.c.state.in_(["pending", "running"])))).scalar_one()
                state = conn.execute(select(studies.c.state).where(studies.c.study_uid == study_uid)).scalar()
                if open_rows or open_jobs or state not in ("done", "failed"):
                    continue
                files = [r[0] for r in conn.execute(select(instances.c.path).where(instances.c.study_uid == study_uid))]
                files += [r[0] for r in conn.execute(select(results.c.path).where(results.c.study_uid == study_uid))]
                result_uids = select(results.c.sop_instance_uid).where(results.c.study_uid == study_uid)
                conn.execute(delete(outbox).where(outbox.c.result_uid.in_(result_uids)))
                conn.execute(delete(results).where(results.c.study_uid == study_uid))
                conn.execute(delete(jobs).where(jobs.c.study_uid == study_uid))
                conn.execute(delete(instances).where(instances.c.study_uid == study_uid))
                conn.execute(delete(studies).where(studies.c.study_uid == study_uid))
            for f in files:  # after the commit: a crash here leaves orphan files, never rows without files
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
            purged += 1
        with self.engine.begin() as conn:  # lookup records age out with the studies they were made for
            conn.execute(delete(priors).where(priors.c.started_at < t - older_than_seconds))
        return purged

    # Status -------------------------------------------------------------------------------------------
    def summary(self, limit: int = 50) -> dict[str, Any]:
        with self.engine.connect() as conn:
            def counts(table, col):
                return {k: v for k, v in conn.execute(select(col, func.count()).group_by(col))}
            return {
                "studies": counts(studies, studies.c.state),
                "jobs": counts(jobs, jobs.c.state),
                "outbox": counts(outbox, outbox.c.state),
                "quarantined": conn.execute(select(func.count()).select_from(quarantine)).scalar_one(),
                "recent_studies": [dict(r) for r in conn.execute(
                    select(studies).order_by(studies.c.last_received_at.desc()).limit(limit)).mappings()],
                "recent_jobs": [dict(r) for r in conn.execute(
                    select(jobs).order_by(jobs.c.id.desc()).limit(limit)).mappings()],
                "parked": [dict(r) for r in conn.execute(
                    select(outbox).where(outbox.c.state == "parked").order_by(outbox.c.id.desc())
                    .limit(limit)).mappings()],
                "pending_outbox": [dict(r) for r in conn.execute(
                    select(outbox).where(outbox.c.state == "pending").order_by(outbox.c.id).limit(limit)).mappings()],
                "quarantine": [dict(r) for r in conn.execute(
                    select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)).mappings()],
                "priors": [dict(r) for r in conn.execute(
                    select(priors).order_by(priors.c.id.desc()).limit(limit)).mappings()],
            }

    # Priors (node/priors.py) ----------------------------------------------------------------------------
    @staticmethod
    def _expected_prior(conn, study_uid: str) -> bool:
        return conn.execute(select(priors.c.id).where(priors.c.prior_study_uid == study_uid).limit(1)).first() \
            is not None

    @staticmethod
    def _record_prior(conn, rec: InstanceRecord, t: float) -> None:
        """A retrieved prior: kept apart from received work. Its study is 'done' at once (no quiet timer, no
        rule), so retention purges it like a finished study; a study the node already holds as its own work is
        left as it is, and so is an instance it already holds."""
        have = conn.execute(select(instances.c.is_prior).where(
            instances.c.sop_instance_uid == rec.sop_instance_uid)).first()
        if have is not None and not have[0]:
            return
        conn.execute(delete(instances).where(instances.c.sop_instance_uid == rec.sop_instance_uid))
        conn.execute(insert(instances).values(received_at=t, **{**rec.__dict__, "is_prior": True}))
        row = conn.execute(select(studies.c.is_prior).where(studies.c.study_uid == rec.study_uid)).first()
        if row is None:
            conn.execute(insert(studies).values(
                study_uid=rec.study_uid, state="done", version=0, first_received_at=t, last_received_at=t,
                completed_at=t, is_prior=True, note="prior study, retrieved for comparison"))
        elif row[0]:
            conn.execute(update(studies).where(studies.c.study_uid == rec.study_uid)
                         .values(last_received_at=t, completed_at=t))

    def start_prior_lookup(self, for_study_uid: str) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(insert(priors).values(for_study_uid=for_study_uid, state="querying",
                                                     started_at=now()))
            return int(res.inserted_primary_key[0])

    def expect_prior(self, lookup_id: int, prior_study_uid: str) -> None:
        """Committed before the retrieve: instances of ``prior_study_uid`` are recorded as priors from now on."""
        with self.engine.begin() as conn:
            conn.execute(update(priors).where(priors.c.id == lookup_id)
                         .values(prior_study_uid=prior_study_uid, state="retrieving"))

    def finish_prior_lookup(self, lookup_id: int, state: str, outcome: str, seconds: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(priors).where(priors.c.id == lookup_id)
                         .values(state=state, outcome=outcome, finished_at=now(), seconds=seconds))

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(instances).where(
                instances.c.sop_instance_uid == sop_instance_uid)).mappings().first()
            return dict(row) if row else None
