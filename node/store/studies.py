"""Received instances, studies and their decision: what the SCP records and the quiet-timer closes.

Part of :class:`node.store.state.Store` (one short transaction per method); also the quarantine log and the
studies still receiving (their quiet-timer checks, rescheduled at start).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from sqlalchemy import and_, bindparam, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from node.store.priors import PriorsPart
from node.store.records import InstanceRecord
from node.store.compat import SchemaGuard
from node.store.conflicts import retry_on_conflict
from node.store.schema import instances, jobs, now, priors, quarantine, studies

# The common case of every received instance, as one statement: its study is already receiving, its quiet-timer
# check is scheduled, and no prior lookup waits for it; only the time of the last instance moves.
_TOUCH_RECEIVING = (
    update(studies)
    .where(and_(studies.c.study_uid == bindparam("uid"), studies.c.state == "receiving",
                studies.c.check_due_at.is_not(None),
                ~exists().where(priors.c.prior_study_uid == bindparam("uid"))))
    .values(last_received_at=bindparam("t"))
)

#: A study closed this long ago whose version still has no job lost its decider (killed between closing the study
#: and creating its jobs): it is decided again. A decision takes milliseconds; deciding twice is harmless anyway
#: (job creation is idempotent per study, rule and version, under a unique constraint), the wait only saves work.
REDECIDE_AFTER_SECONDS = 2.0


class StudiesPart(PriorsPart):
    """Instances, studies, quarantine, decisions; the studies still receiving."""

    engine: Engine
    schema_guard: SchemaGuard

    def record_instances(self, records: Sequence[InstanceRecord], quiet_seconds: float,
                         first_check_now: bool = False) -> list[tuple[str, float]]:
        """Commit received instances in one transaction (a resend replaces the earlier row).

        Returns the studies whose quiet-timer check must be scheduled, with the time it is due. ``first_check_now``:
        a new study is checked at once (completion triggers may decide it early, :mod:`node.flow.completion`); a
        watched study (receiving, no check scheduled: :mod:`node.store.workflow`) is checked at once anyway.
        """
        self.schema_guard.check()
        return self._record_instances(records, quiet_seconds, first_check_now)

    # Two associations created the same study row at once (PostgreSQL, READ COMMITTED): the row exists now, so
    # the next attempt takes the update path.
    @retry_on_conflict
    def _record_instances(self, records: Sequence[InstanceRecord], quiet_seconds: float,
                          first_check_now: bool = False) -> list[tuple[str, float]]:
        t = now()
        to_schedule: dict[str, float] = {}
        # One statement for the instance rows; per study one UPDATE when it is already receiving (the common
        # case), else a read and a write: a group commit brings many records of few studies. A SOP Instance UID
        # twice in one batch (a resend racing itself): the last wins.
        latest = list({rec.sop_instance_uid: rec for rec in records}.values())
        own_studies = {rec.study_uid for rec in latest if not rec.is_prior}
        with self.engine.begin() as conn:
            touched = {uid for uid in own_studies if conn.execute(_TOUCH_RECEIVING, {"uid": uid, "t": t}).rowcount == 1}
            prior_studies = {uid for uid in own_studies - touched if self._expected_prior(conn, uid)}
            own = []
            for rec in latest:
                if rec.is_prior or rec.study_uid in prior_studies:
                    self._record_prior(conn, rec, t)
                else:
                    own.append(rec)
            if not own:
                return []
            self._replace_instances(conn, [dict(received_at=t, **rec.__dict__) for rec in own])
            first_of_study: dict[str, InstanceRecord] = {}
            for rec in own:
                first_of_study.setdefault(rec.study_uid, rec)
            for study_uid, rec in first_of_study.items():
                if study_uid in touched:
                    continue
                row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
                due = t + quiet_seconds
                if row is None:
                    due = t if first_check_now else due
                    conn.execute(insert(studies).values(
                        study_uid=study_uid, state="receiving", version=0, first_received_at=t,
                        last_received_at=t, check_due_at=due, is_prior=rec.is_prior))
                    to_schedule[study_uid] = due
                else:
                    values: dict[str, Any] = {"last_received_at": t}
                    if row["state"] != "receiving":
                        values["state"] = "receiving"  # a late instance re-opens the study
                        values["note"] = f"re-opened by a new instance after version {row['version']}"
                    elif row["check_due_at"] is None:
                        due = t  # watched (node/store/workflow.py): this instance may complete it
                    if row["check_due_at"] is None:
                        values["check_due_at"] = due
                        to_schedule[study_uid] = due
                    conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(**values))
        return list(to_schedule.items())

    @staticmethod
    def _replace_instances(conn: Any, rows: list[dict[str, Any]]) -> None:
        """Insert instance rows; a row with the same SOP Instance UID (a resend) is replaced, in one statement
        where the database has an upsert."""
        upsert = _upsert_instances(conn.dialect.name)
        if upsert is None:
            conn.execute(delete(instances).where(instances.c.sop_instance_uid.in_([r["sop_instance_uid"] for r in rows])))
            conn.execute(insert(instances), rows)
            return
        conn.execute(upsert, rows)

    def record_quarantine(self, path: str, reason: str, sop_instance_uid: str | None, calling_ae: str) -> None:
        """Log a file that was refused and kept aside (its reason; the file stays where ``path`` says)."""
        with self.engine.begin() as conn:
            conn.execute(insert(quarantine).values(path=path, reason=reason, sop_instance_uid=sop_instance_uid,
                                                   calling_ae=calling_ae, received_at=now()))

    def study(self, study_uid: str) -> dict[str, Any] | None:
        """The ``studies`` row of ``study_uid``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
            return dict(row) if row else None

    def study_instances(self, study_uid: str, *, include_priors: bool = False) -> list[dict[str, Any]]:
        """The instances of a study, by series and arrival; retrieved priors only when asked for."""
        q = select(instances).where(instances.c.study_uid == study_uid)
        if not include_priors:
            q = q.where(instances.c.is_prior.is_(False))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(instances.c.series_uid, instances.c.received_at)).mappings()]

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """The ``instances`` row of ``sop_instance_uid``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(instances).where(
                instances.c.sop_instance_uid == sop_instance_uid)).mappings().first()
            return dict(row) if row else None

    def begin_decision(self, study_uid: str, quiet_seconds: float,
                       redecide_after: float = REDECIDE_AFTER_SECONDS) -> tuple[str, float | int]:
        """Close a quiet study: returns ("complete", version), ("wait", due_at) or ("skip", 0).

        A study closed more than ``redecide_after`` seconds ago whose version has no job (the process deciding
        it died between closing it and creating its jobs) is ("complete", its version) again; job creation is
        idempotent per (study, rule, version).
        """
        self.schema_guard.check()  # a node the schema moved past closes no study (its jobs could not be made)
        t = now()
        with self.engine.begin() as conn:
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
            if (row is not None and row["state"] == "complete" and row["completed_at"] is not None
                    and row["completed_at"] < t - redecide_after
                    and not _has_jobs(conn, study_uid, row["version"])):
                return ("complete", row["version"])  # its decider died before creating the jobs: decide again
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

    def receiving_not_due(self, quiet_seconds: float) -> list[tuple[str, float]]:
        """Studies still receiving whose quiet time has not passed yet, with the time their check is due."""
        t = now()
        with self.engine.connect() as conn:
            return [(r[0], r[1] + quiet_seconds) for r in conn.execute(
                select(studies.c.study_uid, studies.c.last_received_at).where(and_(
                    studies.c.state == "receiving", studies.c.last_received_at + quiet_seconds > t)))]


@functools.cache
def _upsert_instances(dialect_name: str) -> Any:
    """INSERT ... ON CONFLICT (sop_instance_uid) DO UPDATE of every column, built once per database kind (None
    where SQLAlchemy has no upsert for it)."""
    dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(dialect_name)
    if dialect is None:
        return None
    stmt = dialect.insert(instances)
    return stmt.on_conflict_do_update(
        index_elements=[instances.c.sop_instance_uid],
        set_={c.name: stmt.excluded[c.name] for c in instances.c if c.name != "sop_instance_uid"})


def _has_jobs(conn: Any, study_uid: str, version: int) -> bool:
    """Does version ``version`` of the study have any job (pending, waiting, running or finished)?"""
    return conn.execute(select(exists().where(and_(jobs.c.study_uid == study_uid,
                                                   jobs.c.study_version == version)))).scalar()
