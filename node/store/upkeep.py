"""Recovery, retention and status over every table: leases left by dead processes, purging, the summary.

Part of :class:`node.store.state.Store`. The sweep's stale work is here too: it spans studies, jobs and the outbox.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.engine import Engine

from node.store.outbox import OutboxPart
from node.store.studies import REDECIDE_AFTER_SECONDS
from node.store.schema import circuits, instances, jobs, now, outbox, priors, quarantine, results, studies

log = logging.getLogger(__name__)


class UpkeepPart(OutboxPart):
    """Lease recovery at start, the sweep's stale work, retention purge, the status summary."""

    engine: Engine

    def release_leases_of(self, instance_id: str, pid: int | None = None) -> int:
        """Drop every lease held by this node instance's earlier processes (or by its process ``pid``).

        Called by ``serve`` before it starts its workers: nothing of this instance is running then, so a lease
        still held was left by a process that died (SIGKILL, power loss) and its work resumes at once. With
        ``pid``: serve's worker process ``pid`` died (lease owners are ``instance:pid:random``).
        """
        prefix = f"{instance_id}:" if pid is None else f"{instance_id}:{pid}:"
        n = 0
        with self.engine.begin() as conn:
            n += conn.execute(update(jobs).where(and_(jobs.c.lease_owner.startswith(prefix),
                                                      jobs.c.state == "running"))
                              .values(state="pending", lease_owner=None, lease_until=None,
                                      next_attempt_at=now())).rowcount
            n += conn.execute(update(outbox).where(outbox.c.lease_owner.startswith(prefix))
                              .values(lease_owner=None, lease_until=None)).rowcount
        return n

    def stale_work(self, quiet_seconds: float, *, fresh_start: bool = False,
                   redecide_after: float = REDECIDE_AFTER_SECONDS) -> dict[str, list]:
        """What a sweep must (re-)enqueue: quiet studies, due jobs with no live lease, due destinations.

        ``fresh_start``: the worker process just started, so no pending job can be waiting in its queue from a
        task it consumed before dying (Huey delivers at most once): every due pending job is re-enqueued.
        """
        t = now()
        recent = t + 1 if fresh_start else t - 60
        with self.engine.connect() as conn:
            quiet = [r[0] for r in conn.execute(select(studies.c.study_uid).where(and_(
                studies.c.state == "receiving", studies.c.last_received_at + quiet_seconds <= t)))]
            # closed, but the decider died before creating the jobs (begin_decision decides them again)
            quiet += [r[0] for r in conn.execute(select(studies.c.study_uid).where(and_(
                studies.c.state == "complete", studies.c.completed_at < t - redecide_after,
                ~exists().where(and_(jobs.c.study_uid == studies.c.study_uid,
                                     jobs.c.study_version == studies.c.version)))))]
            # a pending job updated in the last minute is most likely still in the queue: leave it there
            # jobs of an endpoint whose circuit is open wait for it (node/flow/circuit.py), not for the sweep, unless
            # their horizon passed (run_job parks them)
            due_jobs = [r[0] for r in conn.execute(select(jobs.c.id).where(or_(
                and_(jobs.c.state == "pending", jobs.c.next_attempt_at <= t, jobs.c.updated_at < recent,
                     or_(jobs.c.endpoint.not_in(select(circuits.c.endpoint)), jobs.c.give_up_at <= t)),
                and_(jobs.c.state == "running", jobs.c.lease_until < t))))]
        return {"studies": quiet, "jobs": due_jobs, "destinations": [d for d, _ in self.due_destinations()]}

    def purge_delivered(self, older_than_seconds: float, keep_failed_seconds: float = 0.0,
                        on_purged: Callable[[str, dict[str, int]], None] | None = None) -> int:
        """Delete spool files, result files and rows of finished studies whose results were all delivered.

        A study with a parked or pending outbox row, a job not finished (pending, running, parked), or one that
        is receiving again is kept; a failed study is kept at least ``keep_failed_seconds``. Quarantined files are
        never purged here (only by hand). ``on_purged(study_uid, {sop_class_uid: instances})`` after each study
        (its audit event).
        """
        t = now()
        purged = 0
        failed_older = t - max(older_than_seconds, keep_failed_seconds)
        with self.engine.connect() as conn:
            candidates = [r[0] for r in conn.execute(select(studies.c.study_uid).where(or_(
                and_(studies.c.state == "done", studies.c.completed_at < t - older_than_seconds),
                and_(studies.c.state == "failed", studies.c.completed_at < failed_older))))]
        for study_uid in candidates:
            with self.engine.begin() as conn:
                open_rows = conn.execute(select(func.count()).select_from(outbox).join(
                    results, results.c.sop_instance_uid == outbox.c.result_uid).where(and_(
                        results.c.study_uid == study_uid,
                        outbox.c.state.notin_(["delivered", "committed"])))).scalar_one()
                open_jobs = conn.execute(select(func.count()).select_from(jobs).where(and_(
                    jobs.c.study_uid == study_uid,
                    jobs.c.state.in_(["pending", "running", "waiting", "parked"])))).scalar_one()
                state = conn.execute(select(studies.c.state).where(studies.c.study_uid == study_uid)).scalar()
                if open_rows or open_jobs or state not in ("done", "failed"):
                    continue
                # (path, the newest file time that is still the purged copy): a resend of the same SOP Instance
                # UID rewrites the same path after the row was committed, so a newer file is the resend's own
                files = [(r[0], float(r[1])) for r in conn.execute(
                    select(instances.c.path, instances.c.received_at).where(instances.c.study_uid == study_uid))]
                files += [(r[0], None) for r in conn.execute(
                    select(results.c.path).where(results.c.study_uid == study_uid))]
                classes = {r[0]: int(r[1]) for r in conn.execute(
                    select(instances.c.sop_class_uid, func.count()).where(instances.c.study_uid == study_uid)
                    .group_by(instances.c.sop_class_uid))} if on_purged is not None else {}
                result_uids = select(results.c.sop_instance_uid).where(results.c.study_uid == study_uid)
                conn.execute(delete(outbox).where(outbox.c.result_uid.in_(result_uids)))
                conn.execute(delete(results).where(results.c.study_uid == study_uid))
                conn.execute(delete(jobs).where(jobs.c.study_uid == study_uid))
                conn.execute(delete(instances).where(instances.c.study_uid == study_uid))
                conn.execute(delete(studies).where(studies.c.study_uid == study_uid))
            for f, committed_at in files:  # after the commit: a crash here leaves orphans, never rows without files
                _unlink_unless_newer(f, committed_at)
            purged += 1
            if on_purged is not None:
                on_purged(study_uid, classes)
        with self.engine.begin() as conn:  # lookup records age out with the studies they were made for
            conn.execute(delete(priors).where(priors.c.started_at < t - older_than_seconds))
        return purged

    def summary(self, limit: int = 50) -> dict[str, Any]:
        """Counts by state and the newest rows of each kind (``dicom-node status``)."""
        with self.engine.connect() as conn:
            def counts(table: Any, col: Any) -> dict[Any, int]:
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
                "parked_jobs": [dict(r) for r in conn.execute(
                    select(jobs).where(jobs.c.state == "parked").order_by(jobs.c.id.desc()).limit(limit)).mappings()],
                "circuits": [dict(r) for r in conn.execute(select(circuits).order_by(circuits.c.endpoint)).mappings()],
                "pending_outbox": [dict(r) for r in conn.execute(
                    select(outbox).where(outbox.c.state == "pending").order_by(outbox.c.id).limit(limit)).mappings()],
                "quarantine": [dict(r) for r in conn.execute(
                    select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)).mappings()],
                "priors": [dict(r) for r in conn.execute(
                    select(priors).order_by(priors.c.id.desc()).limit(limit)).mappings()],
            }


def _unlink_unless_newer(path: str, committed_at: float | None) -> None:
    """Delete a purged file, but not one written after its row was committed (a resend racing the purge).

    The receiver writes an instance's file before it commits the row, at the same path for the same SOP
    Instance UID; a file modified after the purged row's commit belongs to a resend whose row may still come
    (kept; if that resend never commits it, it is an orphan file, never a row without a file).
    """
    try:
        if committed_at is not None and os.stat(path).st_mtime > committed_at:
            log.info("retention: kept %s, received again while its study was purged", os.path.basename(path))
            return
        os.unlink(path)
    except FileNotFoundError:
        pass
