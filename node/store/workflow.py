"""Study completion in the database: MPPS and IAN received, the decision transaction, decision records.

Part of :class:`node.store.state.Store`. The precedence of the triggers is :mod:`node.flow.completion`'s; here are
the rows it reads and writes, each change in one short transaction:

- :meth:`WorkflowPart.create_notice` / :meth:`WorkflowPart.set_mpps`: an MPPS N-CREATE or N-SET, an IAN (N-CREATE),
  committed before the SCP answers. A final MPPS (COMPLETED, DISCONTINUED) or an IAN also sets the studies it
  names to *watched* (``check_due_at`` NULL while receiving, see below) in the same transaction.
- :meth:`WorkflowPart.completion_txn`: the decision of one study, as one write transaction holding the study's row
  (SQLite's ``BEGIN IMMEDIATE``; ``SELECT ... FOR UPDATE`` on PostgreSQL), so that no instance is committed between
  what the decision reads and what it writes.

A *watched* study is one still receiving whose ``check_due_at`` is NULL: every instance of it then takes the
receive path's read-then-write branch (:meth:`node.store.studies.StudiesPart.record_instances`), which schedules
its check at once. A study nothing watches keeps ``check_due_at`` set and costs its instances nothing more.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from node.store.compat import SchemaGuard
from node.store.schema import (decisions, instances, jobs, notice_refs, now, studies, study_notices,
                               ups_workitems)

FINAL_MPPS = ("COMPLETED", "DISCONTINUED")


class NoticeError(Exception):
    """An MPPS/IAN message the SCP must refuse; ``status`` is the DIMSE failure status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Ref:
    """One instance an MPPS or IAN lists."""

    sop_instance_uid: str
    sop_class_uid: str = ""
    series_uid: str = ""


class CompletionTxn:
    """The decision transaction of one study (see :meth:`WorkflowPart.completion_txn`)."""

    def __init__(self, conn: Connection, study_uid: str, row: dict[str, Any] | None, t: float) -> None:
        self.conn = conn
        self.study_uid = study_uid
        self.row = row
        self.now = t

    def has_jobs(self) -> bool:
        """Does the study's current version have any job?"""
        assert self.row is not None
        return bool(self.conn.execute(select(exists().where(and_(
            jobs.c.study_uid == self.study_uid, jobs.c.study_version == self.row["version"])))).scalar())

    def decision(self) -> dict[str, Any] | None:
        """The decision record of the study's current version."""
        assert self.row is not None
        row = self.conn.execute(select(decisions).where(and_(
            decisions.c.study_uid == self.study_uid, decisions.c.version == self.row["version"]))).mappings().first()
        return dict(row) if row else None

    def notices(self) -> list[dict[str, Any]]:
        """The MPPS and IAN rows naming this study (uid, kind, state, updated_at)."""
        return [dict(r) for r in self.conn.execute(
            select(study_notices.c.uid, study_notices.c.kind, study_notices.c.state, study_notices.c.updated_at)
            .where(study_notices.c.study_uid == self.study_uid)).mappings()]

    def missing(self, notice_uids: Sequence[str]) -> int:
        """How many distinct instances listed by these notices the node does not hold (in any study)."""
        if not notice_uids:
            return 0
        held = exists().where(instances.c.sop_instance_uid == notice_refs.c.sop_instance_uid)
        return int(self.conn.execute(
            select(func.count(func.distinct(notice_refs.c.sop_instance_uid)))
            .where(and_(notice_refs.c.notice_uid.in_(list(notice_uids)), ~held))).scalar_one())

    def listed(self, notice_uids: Sequence[str]) -> int:
        """How many distinct instances these notices list."""
        if not notice_uids:
            return 0
        return int(self.conn.execute(select(func.count(func.distinct(notice_refs.c.sop_instance_uid)))
                                     .where(notice_refs.c.notice_uid.in_(list(notice_uids)))).scalar_one())

    def workitem_fetching(self) -> bool:
        """Is a UPS workitem of this node fetching this study's instances (its performer decides it)?"""
        return bool(self.conn.execute(select(exists().where(and_(
            ups_workitems.c.study_uid == self.study_uid, ups_workitems.c.state == "claimed")))).scalar())

    def clear_check(self) -> None:
        """Nothing to decide (the study is not receiving): no check is scheduled any more."""
        if self.row is not None and self.row["check_due_at"] is not None:
            self.conn.execute(update(studies).where(studies.c.study_uid == self.study_uid).values(check_due_at=None))

    def wait(self, due: float, watch: bool) -> None:
        """Not complete yet: check again at ``due``; ``watch``: every new instance checks it at once."""
        self.conn.execute(update(studies).where(studies.c.study_uid == self.study_uid)
                          .values(check_due_at=None if watch else due))

    def close(self, trigger: str, detail: str, *, rules: Sequence[str] | None = None,
              discontinued: bool = False) -> int | None:
        """Close the receiving study as a new version decided by ``trigger``; None when an instance came meanwhile."""
        assert self.row is not None
        version = int(self.row["version"]) + 1
        res = self.conn.execute(
            update(studies)
            .where(and_(studies.c.study_uid == self.study_uid, studies.c.state == "receiving",
                        studies.c.last_received_at == self.row["last_received_at"]))
            .values(state="complete", version=version, completed_at=self.now, check_due_at=None))
        if res.rowcount != 1:
            return None
        record_decision(self.conn, self.study_uid, version, trigger, self.now, self.row["last_received_at"],
                        detail, rules, discontinued)
        return version


def record_decision(conn: Connection, study_uid: str, version: int, trigger: str, t: float,
                    last_instance_at: float | None, detail: str, rules: Sequence[str] | None,
                    discontinued: bool) -> None:
    """Insert (or replace) the decision record of one study version."""
    conn.execute(delete(decisions).where(and_(decisions.c.study_uid == study_uid, decisions.c.version == version)))
    conn.execute(insert(decisions).values(
        study_uid=study_uid, version=version, trigger=trigger, decided_at=t, last_instance_at=last_instance_at,
        detail=detail[:500], rules=None if rules is None else json.dumps(list(rules)), discontinued=discontinued))


class WorkflowPart:
    """MPPS and IAN rows, the decision transaction, decision records."""

    engine: Engine
    schema_guard: SchemaGuard

    # -- MPPS and IAN -----------------------------------------------------------------------------------------
    def create_notice(self, kind: str, uid: str, study_uids: Sequence[str], state: str, calling_ae: str,
                      dataset_json: str | None, refs: Sequence[Ref]) -> list[str]:
        """Record an MPPS N-CREATE or an IAN; returns the studies a final state now watches.

        :class:`NoticeError` 0x0111 (duplicate SOP instance) when an MPPS with this UID exists; an IAN with a
        UID already known replaces the earlier one (a PACS may send it again).
        """
        t = now()
        with self.engine.begin() as conn:
            known = conn.execute(select(study_notices.c.kind).where(study_notices.c.uid == uid)).first()
            if known is not None:
                if kind == "mpps" or known[0] != kind:
                    raise NoticeError(0x0111, f"{kind.upper()} {uid} exists already")
                conn.execute(delete(study_notices).where(study_notices.c.uid == uid))
                conn.execute(delete(notice_refs).where(notice_refs.c.notice_uid == uid))
            for study in dict.fromkeys(study_uids):
                conn.execute(insert(study_notices).values(uid=uid, study_uid=study, kind=kind, state=state,
                                                          calling_ae=calling_ae, created_at=t, updated_at=t,
                                                          dataset=dataset_json))
            _write_refs(conn, uid, refs)
            return _watch(conn, study_uids) if kind == "ian" or state in FINAL_MPPS else []

    def mpps(self, uid: str) -> dict[str, Any] | None:
        """An MPPS as recorded: state, dataset (DICOM JSON), the studies it names."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(study_notices).where(and_(
                study_notices.c.uid == uid, study_notices.c.kind == "mpps"))).mappings()]
        if not rows:
            return None
        return {**rows[0], "study_uids": [r["study_uid"] for r in rows]}

    def set_mpps(self, uid: str, state: str, dataset_json: str, study_uids: Sequence[str],
                 refs: Sequence[Ref]) -> list[str]:
        """Record an MPPS N-SET (the merged data set); returns the studies a final state now watches.

        :class:`NoticeError` 0x0112 (no such SOP instance) for an unknown MPPS, 0x0110 (processing failure: may no
        longer be updated) for one already COMPLETED or DISCONTINUED.
        """
        t = now()
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(select(study_notices).where(and_(
                study_notices.c.uid == uid, study_notices.c.kind == "mpps"))).mappings()]
            if not rows:
                raise NoticeError(0x0112, f"no MPPS {uid}")
            if rows[0]["state"] in FINAL_MPPS:
                raise NoticeError(0x0110, f"MPPS {uid} is {rows[0]['state']} and may no longer be updated")
            created = rows[0]["created_at"]
            conn.execute(delete(study_notices).where(study_notices.c.uid == uid))
            for study in dict.fromkeys(study_uids):
                conn.execute(insert(study_notices).values(uid=uid, study_uid=study, kind="mpps", state=state,
                                                          calling_ae=rows[0]["calling_ae"], created_at=created,
                                                          updated_at=t, dataset=dataset_json))
            conn.execute(delete(notice_refs).where(notice_refs.c.notice_uid == uid))
            _write_refs(conn, uid, refs)
            return _watch(conn, study_uids) if state in FINAL_MPPS else []

    def notices_of(self, study_uid: str) -> list[dict[str, Any]]:
        """The MPPS and IAN of a study with how many instances each lists and how many are held (status page)."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(
                select(study_notices.c.uid, study_notices.c.kind, study_notices.c.state, study_notices.c.calling_ae,
                       study_notices.c.created_at, study_notices.c.updated_at)
                .where(study_notices.c.study_uid == study_uid).order_by(study_notices.c.created_at)).mappings()]
            for r in rows:
                txn = CompletionTxn(conn, study_uid, None, now())
                r["listed"] = txn.listed([r["uid"]])
                r["missing"] = txn.missing([r["uid"]])
        return rows

    # -- decisions ---------------------------------------------------------------------------------------------
    @contextmanager
    def completion_txn(self, study_uid: str) -> Iterator[CompletionTxn]:
        """One write transaction over the study's row (None when the study is unknown); see the module doc."""
        self.schema_guard.check()  # a node the schema moved past decides no study (its jobs could not be made)
        t = now()
        with self.engine.begin() as conn:
            q = select(studies).where(studies.c.study_uid == study_uid)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            row = conn.execute(q).mappings().first()
            yield CompletionTxn(conn, study_uid, dict(row) if row else None, t)

    def decisions_of(self, study_uid: str) -> list[dict[str, Any]]:
        """Every decision record of a study, oldest version first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(decisions).where(decisions.c.study_uid == study_uid)
                                                  .order_by(decisions.c.version)).mappings()]

    def decision_of(self, study_uid: str, version: int) -> dict[str, Any] | None:
        """The decision record of one study version."""
        with self.engine.connect() as conn:
            row = conn.execute(select(decisions).where(and_(decisions.c.study_uid == study_uid,
                                                            decisions.c.version == version))).mappings().first()
        return dict(row) if row else None

    def skip_jobs(self, study_uid: str, version: int, planned: Sequence[tuple[str, str, list[str]]],
                  outcome: str) -> None:
        """Record jobs that are not run (state ``skipped`` with ``outcome``); idempotent per (study, rule, version).
        A study left with no open job is done."""
        t = now()
        with self.engine.begin() as conn:
            for rule_name, endpoint, series_uids in planned:
                if conn.execute(select(jobs.c.id).where(and_(
                        jobs.c.study_uid == study_uid, jobs.c.rule_name == rule_name,
                        jobs.c.study_version == version))).first():
                    continue
                conn.execute(insert(jobs).values(
                    job_uid=uuid.uuid4().hex, study_uid=study_uid, study_version=version, rule_name=rule_name,
                    endpoint=endpoint, series_uids=json.dumps(series_uids), state="skipped", attempts=0,
                    next_attempt_at=t, created_at=t, updated_at=t, outcome=outcome[:500]))
            open_jobs = conn.execute(select(func.count()).select_from(jobs).where(and_(
                jobs.c.study_uid == study_uid, jobs.c.study_version == version,
                jobs.c.state.in_(["pending", "running", "waiting", "parked"])))).scalar_one()
            if open_jobs == 0:
                conn.execute(update(studies).where(and_(studies.c.study_uid == study_uid,
                                                        studies.c.state.in_(["complete", "done"])))
                             .values(state="done", note=outcome[:500]))

    def purge_workflow(self, older_than_seconds: float) -> int:
        """Delete decision records of purged studies, and MPPS/IAN rows older than this whose study is gone
        (or never came); returns how many notices went."""
        t = now()
        gone = ~exists().where(studies.c.study_uid == decisions.c.study_uid)
        with self.engine.begin() as conn:
            conn.execute(delete(decisions).where(and_(gone, decisions.c.decided_at < t - 60)))
            old = select(study_notices.c.uid).where(and_(
                study_notices.c.updated_at < t - older_than_seconds,
                ~exists().where(studies.c.study_uid == study_notices.c.study_uid)))
            uids = [r[0] for r in conn.execute(old)]
            if uids:
                conn.execute(delete(study_notices).where(study_notices.c.uid.in_(uids)))
                conn.execute(delete(notice_refs).where(notice_refs.c.notice_uid.in_(uids)))
        return len(uids)


def _write_refs(conn: Connection, uid: str, refs: Sequence[Ref]) -> None:
    unique = {r.sop_instance_uid: r for r in refs}
    if unique:
        conn.execute(insert(notice_refs), [{"notice_uid": uid, "sop_instance_uid": r.sop_instance_uid,
                                            "sop_class_uid": r.sop_class_uid, "series_uid": r.series_uid}
                                           for r in unique.values()])


def _watch(conn: Connection, study_uids: Sequence[str]) -> list[str]:
    """Receiving studies among ``study_uids`` become watched (their instances check them at once)."""
    uids = list(dict.fromkeys(study_uids))
    if uids:
        conn.execute(update(studies).where(and_(studies.c.study_uid.in_(uids), studies.c.state == "receiving"))
                     .values(check_due_at=None))
    return uids
