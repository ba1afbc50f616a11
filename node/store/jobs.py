"""Jobs: created per (study version, rule), leased by a worker, finished with their results and outbox rows.

Part of :class:`node.store.state.Store`. A job is claimed with a lease (owner + expiry) so that a task
delivered twice, or a worker killed mid-task, never runs twice at once; "waiting" jobs wait for a
classification (node/flow/classified.py).
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Collection, Iterable, Mapping, Sequence

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from node.store.compat import SchemaGuard
from node.store.conflicts import retry_on_conflict
from node.store.schema import jobs, now, outbox, results, studies


def destinations_for(kind: str, destinations: Sequence[str],
                     result_kinds: Mapping[str, Collection[str]] | None) -> list[str]:
    """The destinations that receive a result of ``kind`` (``destinations.<name>.results``; all when unknown)."""
    if result_kinds is None:
        return list(destinations)
    return [d for d in destinations if d not in result_kinds or kind in result_kinds[d]]


class JobsPart:
    """Jobs, waiting jobs, results of earlier study versions."""

    engine: Engine
    schema_guard: SchemaGuard

    @retry_on_conflict  # two deciders of one study version on PostgreSQL: the loser finds the winner's jobs
    def create_jobs(self, study_uid: str, version: int, planned: Iterable[tuple[str, str, list[str]]],
                    waiting: Iterable[tuple[str, str, list[str]]] = ()) -> list[int]:
        """Create one pending job per (rule, endpoint, series); idempotent per (study, rule, version).

        ``waiting``: jobs of rules with ``classified:``, created in state "waiting" (node/classified.py).
        """
        self.schema_guard.check()
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

    def claim_job(self, job_id: int, owner: str, lease_seconds: float) -> dict[str, Any] | None:
        """Take the lease of a pending (or lease-expired running) job; None when someone else has it or it is over."""
        self.schema_guard.check()
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
        """The ``jobs`` row of ``job_id``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            return dict(row) if row else None

    def release_job(self, job_id: int, owner: str, *, retry_in: float, outcome: str,
                    give_up_in: float | None = None, counted: bool = True) -> bool:
        """Give a job back for a later attempt (its lease is dropped); False when the lease was lost.

        ``give_up_in``: starts the job's retry horizon (``give_up_at``) when it has none yet. ``counted`` False: the
        attempt never called the endpoint (its circuit was open), so it does not count in ``attempts``.
        """
        t = now()
        values: dict[str, Any] = {"state": "pending", "lease_owner": None, "lease_until": None,
                                  "next_attempt_at": t + retry_in, "outcome": outcome, "updated_at": t}
        if give_up_in is not None:
            values["give_up_at"] = func.coalesce(jobs.c.give_up_at, t + give_up_in)
        if not counted:
            values["attempts"] = jobs.c.attempts - 1
        with self.engine.begin() as conn:
            return conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.lease_owner == owner,
                                                        jobs.c.state == "running"))
                                .values(**values)).rowcount == 1

    def renew_job_lease(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend the lease of a running job this owner holds (its heartbeat); False when it is no longer held."""
        t = now()
        with self.engine.begin() as conn:
            return conn.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.lease_owner == owner,
                                                        jobs.c.state == "running"))
                                .values(lease_until=t + lease_seconds)).rowcount == 1

    def retry_jobs(self, *, study_uid: str | None = None, rule_name: str | None = None,
                   include_failed: bool = False) -> list[dict[str, Any]]:
        """Put parked jobs (and failed ones with ``include_failed``) back to pending (``dicom-node retry --jobs``).

        A retried job starts afresh: attempts from 0 and a new retry horizon. Its study is open again until the
        job ends. Returns the retried jobs (id, endpoint, study_uid).
        """
        states = ["parked", "failed"] if include_failed else ["parked"]
        q = select(jobs.c.id, jobs.c.endpoint, jobs.c.study_uid).where(jobs.c.state.in_(states))
        if study_uid:
            q = q.where(jobs.c.study_uid == study_uid)
        if rule_name:
            q = q.where(jobs.c.rule_name == rule_name)
        t = now()
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(q.order_by(jobs.c.created_at, jobs.c.id)).mappings()]
            ids = [r["id"] for r in rows]
            if ids:
                conn.execute(update(jobs).where(jobs.c.id.in_(ids))
                             .values(state="pending", attempts=0, give_up_at=None, next_attempt_at=t,
                                     lease_owner=None, lease_until=None, updated_at=t,
                                     outcome="queued again by dicom-node retry"))
                conn.execute(update(studies).where(and_(studies.c.study_uid.in_({r["study_uid"] for r in rows}),
                                                        studies.c.state == "failed"))
                             .values(state="complete"))
        return rows

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

    def _settle_study(self, conn: Connection, job_id: int) -> None:
        """The study of ``job_id`` is done (or failed) once no job of its version is open."""
        study_uid = conn.execute(select(jobs.c.study_uid).where(jobs.c.id == job_id)).scalar_one()
        row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
        if row is None or row["state"] != "complete":
            return
        open_jobs = conn.execute(select(func.count()).select_from(jobs).where(and_(
            jobs.c.study_uid == study_uid, jobs.c.study_version == row["version"],
            jobs.c.state.in_(["pending", "running", "waiting", "parked"])))).scalar_one()
        if open_jobs == 0:  # a parked job keeps its study open: it may be retried
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
