"""Retracting and re-running a study's results (`dicom-node retract`, `dicom-node rerun`).

Part of :class:`node.store.state.Store`. A rejection note (IOCM KOS) is a result of kind ``kos``, attached to the
job of one of the results it rejects, with outbox rows to every destination that got (or may be getting) them,
delivered by the outbox like every result. Outbox rows of the rejected results that were never sent are dropped in
the same transaction, so nothing rejected leaves afterwards.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Engine

from node.store.schema import jobs, now, outbox, results, studies


class RevisionsPart:
    """A study's results with where they went; rejection notes; a new study version for a re-run."""

    engine: Engine

    def study_results(self, study_uid: str, rule_name: str | None = None) -> list[dict[str, Any]]:
        """The results of a study (optionally of one rule) with their rule, and their outbox rows under "outbox"."""
        q = (select(results, jobs.c.rule_name, jobs.c.study_version).join(jobs, results.c.job_id == jobs.c.id)
             .where(results.c.study_uid == study_uid))
        if rule_name is not None:
            q = q.where(jobs.c.rule_name == rule_name)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q.order_by(results.c.created_at)).mappings()]
            for row in rows:
                row["outbox"] = [dict(o) for o in conn.execute(
                    select(outbox).where(outbox.c.result_uid == row["sop_instance_uid"])).mappings()]
        return rows

    def add_rejection_note(self, note: dict[str, Any], destinations: Sequence[str],
                           drop_unsent: Sequence[str], kind: str = "kos") -> bool:
        """Record a rejection note (a ``results`` row of kind "kos") and its outbox rows in one transaction.

        ``drop_unsent``: result UIDs whose pending or parked, unleased outbox rows are deleted (never sent, never to
        be). ``kind``: "report" for the retraction of a RIS/EHR report (node/flow/report_retraction.py).
        Returns False when the note was recorded already (the same command run twice).
        """
        t = now()
        with self.engine.begin() as conn:
            if conn.execute(select(results.c.sop_instance_uid).where(
                    results.c.sop_instance_uid == note["sop_instance_uid"])).first() is not None:
                return False
            if drop_unsent:
                conn.execute(delete(outbox).where(and_(
                    outbox.c.result_uid.in_(list(drop_unsent)), outbox.c.state.in_(["pending", "parked"]),
                    (outbox.c.lease_until.is_(None)) | (outbox.c.lease_until < t))))
            conn.execute(insert(results).values(created_at=t, kind=kind, **note))
            for dest in destinations:
                conn.execute(insert(outbox).values(result_uid=note["sop_instance_uid"], destination=dest,
                                                   state="pending", attempts=0, next_attempt_at=t, created_at=t))
        return True

    def begin_rerun(self, study_uid: str) -> int:
        """A new decided version of a study (state "complete") for a re-run; returns it.

        Raises:
            LookupError: no such study, or it is a prior; ValueError: it is still receiving (its quiet timer will
            decide it).
        """
        t = now()
        with self.engine.begin() as conn:
            row = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
            if row is None or row["is_prior"]:
                raise LookupError(f"study {study_uid} is not known to this node")
            if row["state"] == "receiving":
                raise ValueError(f"study {study_uid} is still receiving; it is decided when it goes quiet")
            version = int(row["version"]) + 1
            conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(
                state="complete", version=version, completed_at=t, check_due_at=None,
                note=f"re-run by the operator (version {version})"))
        return version
