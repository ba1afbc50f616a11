"""The monitoring side's store (node/monitoring): reports and observations matched in either order, baselines,
drift results, alerts, retention.

Part of :class:`node.store.state.Store`. Matching: a report names its study by Study Instance UID, accession number
(kept as a hash) or both; an AI observation names both. Whichever arrives second completes the pair: a report that
names only an accession takes the study UID of the observation with the same accession hash, and ``matched_at`` is
set once an observation of its study exists. :func:`observation_write` and :func:`report_write` are fn(connection)
writes, so that they commit inside the transaction that finishes a job, or that keeps an HL7 message before its ACK.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from node.store.schema import embeddings, jobs, monitoring, now, results, studies

_R, _O, _C, _B, _D, _A, _S = (monitoring.reports, monitoring.observations, monitoring.calls, monitoring.baselines,
                              monitoring.drift, monitoring.alerts, monitoring.state)


def _match_reports(conn: Connection, study_uid: str, accession_hash: str | None, t: float) -> None:
    if accession_hash:
        conn.execute(update(_R).where(and_(_R.c.study_uid.is_(None), _R.c.accession_hash == accession_hash))
                     .values(study_uid=study_uid))
    conn.execute(update(_R).where(and_(_R.c.study_uid == study_uid, _R.c.matched_at.is_(None))).values(matched_at=t))


def observation_write(row: dict[str, Any]) -> Callable[[Connection], None]:
    """A write keeping one job's observation (``monitor_observations`` fields) and matching its reports."""
    def write(conn: Connection) -> None:
        t = now()
        conn.execute(delete(_O).where(_O.c.job_id == row["job_id"]))
        conn.execute(insert(_O).values(observed_at=t, **row))
        _match_reports(conn, row["study_uid"], row.get("accession_hash"), t)
    return write


def report_write(row: dict[str, Any]) -> Callable[[Connection], str]:
    """A write keeping one report (``monitor_reports`` fields, ``source_key`` required); a later version from the
    same source replaces the earlier. Returns "stored", "replaced" or "matched"/"replaced-matched"."""
    def write(conn: Connection) -> str:
        t = now()
        values = dict(row)
        if not values.get("study_uid") and values.get("accession_hash"):
            values["study_uid"] = conn.execute(
                select(_O.c.study_uid).where(_O.c.accession_hash == values["accession_hash"])
                .order_by(_O.c.observed_at.desc()).limit(1)).scalar()
        seen = values.get("study_uid") and conn.execute(
            select(_O.c.id).where(_O.c.study_uid == values["study_uid"]).limit(1)).scalar()
        values["matched_at"] = t if seen else None
        old = conn.execute(select(_R.c.id).where(_R.c.source_key == values["source_key"])).scalar()
        if old is None:
            conn.execute(insert(_R).values(received_at=t, **values))
        else:
            conn.execute(update(_R).where(_R.c.id == old).values(received_at=t, **values))
        return ("replaced" if old is not None else "stored") + ("-matched" if seen else "")
    return write


def withdraw_write(source_key: str) -> Callable[[Connection], int]:
    """A write removing a report its source cancelled (HL7 OBR-25 X, FHIR entered-in-error / cancelled)."""
    def write(conn: Connection) -> int:
        return conn.execute(delete(_R).where(_R.c.source_key == source_key)).rowcount
    return write


def _decode(row: Any, *fields: str) -> dict[str, Any]:
    out = dict(row)
    for f in fields:
        out[f] = json.loads(out[f]) if out.get(f) else {}
    return out


class MonitoringPart:
    """Reports, observations, baselines, drift and alerts of the monitoring side."""

    engine: Engine

    def monitor_write(self, write: Callable[[Connection], Any]) -> Any:
        """Run one of this module's writes in a transaction of its own; returns what it returns."""
        with self.engine.begin() as conn:
            return write(conn)

    def record_call(self, endpoint: str, model: str, outcome: str, seconds: float | None = None,
                    status: int | None = None) -> None:
        """One endpoint call's end (``ok`` / ``error`` / ``transient``)."""
        with self.engine.begin() as conn:
            conn.execute(insert(_C).values(endpoint=endpoint, model=model, at=now(), outcome=outcome,
                                           seconds=seconds, status=status))

    def observations_between(self, since: float, until: float | None = None,
                             model: str | None = None) -> list[dict[str, Any]]:
        """Observations made in [since, until), oldest first, JSON fields decoded."""
        q = select(_O).where(_O.c.observed_at >= since)
        if until is not None:
            q = q.where(_O.c.observed_at < until)
        if model:
            q = q.where(_O.c.model == model)
        with self.engine.connect() as conn:
            return [_decode(r, "inputs", "findings", "labels") for r in conn.execute(q.order_by(_O.c.id)).mappings()]

    def matched_reports(self, study_uids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The newest report (by report time, then arrival) of each study, JSON fields decoded."""
        uids = sorted(set(study_uids))
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(uids), 500):
                rows = conn.execute(select(_R).where(_R.c.study_uid.in_(uids[i:i + 500]))
                                    .order_by(_R.c.reported_at, _R.c.received_at, _R.c.id)).mappings()
                for r in rows:
                    out[r["study_uid"]] = _decode(r, "findings", "labels")
        return out

    def report_counts(self) -> dict[str, int]:
        """Reports held: per door, and how many wait for their study (unmatched)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_R.c.door, _R.c.matched_at)).all()
        out: dict[str, int] = {"unmatched": 0}
        for door, matched in rows:
            out[door] = out.get(door, 0) + 1
            out["unmatched"] += matched is None
        return out

    def calls_between(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """Endpoint call ends in [since, until)."""
        q = select(_C).where(_C.c.at >= since)
        if until is not None:
            q = q.where(_C.c.at < until)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(_C.c.id)).mappings()]

    def embedding_sample(self, model_version: str, since: float, until: float, limit: int) -> list[bytes]:
        """Up to ``limit`` stored image embeddings of ``model_version`` made in [since, until), spread evenly."""
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(select(embeddings.c.id).where(and_(
                embeddings.c.model_version == model_version, embeddings.c.created_at >= since,
                embeddings.c.created_at < until)).order_by(embeddings.c.id))]
            if len(ids) > limit:
                step = len(ids) / limit
                ids = [ids[int(i * step)] for i in range(limit)]
            out: list[bytes] = []
            for i in range(0, len(ids), 500):
                out += [r[0] for r in conn.execute(select(embeddings.c.vector).where(embeddings.c.id.in_(ids[i:i + 500]))
                                                   .order_by(embeddings.c.id))]
        return out

    def embedding_versions(self) -> list[str]:
        """Model versions that have stored embeddings."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(select(embeddings.c.model_version).distinct())]

    def result_uids_of(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the node's own results of a study (an SR the PACS sent back is not a report)."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(results.c.sop_instance_uid).where(
                results.c.study_uid == study_uid))}

    def last_jobs_at(self, study_uid: str) -> float | None:
        """When the study's newest jobs were made (None: it never had any)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(jobs.c.created_at)).where(jobs.c.study_uid == study_uid)).scalar()

    def close_after_report(self, study_uid: str, note: str) -> None:
        """A study re-opened only by a radiologist's report: done again, with ``note``, no job made."""
        with self.engine.begin() as conn:
            conn.execute(update(studies).where(and_(studies.c.study_uid == study_uid, studies.c.state == "complete"))
                         .values(state="done", note=note))

    # Baselines -------------------------------------------------------------------------------------------------
    def pin_baseline(self, row: dict[str, Any]) -> int:
        """Make ``row`` the active baseline of its model and version (the earlier one stays, inactive)."""
        with self.engine.begin() as conn:
            conn.execute(update(_B).where(and_(_B.c.model == row["model"], _B.c.model_version == row["model_version"]))
                         .values(active=False))
            return int(conn.execute(insert(_B).values(pinned_at=now(), active=True, **row)).inserted_primary_key[0])

    def unpin_baseline(self, model: str, model_version: str | None = None) -> int:
        """Deactivate the baseline(s) of a model (one version, or all)."""
        cond = _B.c.model == model
        if model_version is not None:
            cond = and_(cond, _B.c.model_version == model_version)
        with self.engine.begin() as conn:
            return conn.execute(update(_B).where(and_(cond, _B.c.active.is_(True))).values(active=False)).rowcount

    def baselines(self, active_only: bool = True) -> list[dict[str, Any]]:
        """Pinned baselines (summary decoded, embedding bytes included)."""
        q = select(_B).order_by(_B.c.id)
        if active_only:
            q = q.where(_B.c.active.is_(True))
        with self.engine.connect() as conn:
            return [_decode(r, "summary") for r in conn.execute(q).mappings()]

    # Drift and alerts -------------------------------------------------------------------------------------------
    def record_drift(self, rows: Sequence[dict[str, Any]]) -> None:
        """Keep one evaluation's drift tests."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(_D), list(rows))

    def drift_since(self, since: float) -> list[dict[str, Any]]:
        """Drift tests evaluated since ``since``, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(_D).where(_D.c.evaluated_at >= since)
                                                  .order_by(_D.c.evaluated_at, _D.c.id)).mappings()]

    def latest_drift(self) -> list[dict[str, Any]]:
        """The tests of the newest evaluation of each model and version."""
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(select(_D).order_by(_D.c.evaluated_at.desc()).limit(2000)).mappings()]
        newest: dict[tuple[str, str], float] = {}
        for r in rows:
            newest.setdefault((r["model"], r["model_version"]), r["evaluated_at"])
        return [r for r in rows if r["evaluated_at"] == newest[(r["model"], r["model_version"])]]

    def set_alerts(self, kind: str, current: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Make the open alerts of ``kind`` exactly ``current`` (key -> message): returns (raised, cleared)."""
        t = now()
        with self.engine.begin() as conn:
            open_rows = {r["key"]: dict(r) for r in conn.execute(select(_A).where(and_(
                _A.c.kind == kind, _A.c.cleared_at.is_(None)))).mappings()}
            raised, cleared = [], []
            for key, message in current.items():
                if key in open_rows:
                    conn.execute(update(_A).where(_A.c.id == open_rows[key]["id"])
                                 .values(last_seen_at=t, message=message))
                else:
                    row = {"key": key, "kind": kind, "raised_at": t, "last_seen_at": t, "message": message}
                    conn.execute(insert(_A).values(**row))
                    raised.append(row)
            for key, row in open_rows.items():
                if key not in current:
                    conn.execute(update(_A).where(_A.c.id == row["id"]).values(cleared_at=t))
                    cleared.append(row)
        return raised, cleared

    def open_alerts(self) -> list[dict[str, Any]]:
        """Alerts not cleared, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(_A).where(_A.c.cleared_at.is_(None))
                                                  .order_by(_A.c.raised_at, _A.c.id)).mappings()]

    def claim_monitor_evaluation(self, every_seconds: float, force: bool = False) -> bool:
        """Is an evaluation due (none in the last ``every_seconds``)? Claims it: one node of a cluster evaluates."""
        t = now()
        with self.engine.begin() as conn:
            last = conn.execute(select(_S.c.value).where(_S.c.name == "evaluated_at")).scalar()
            if last is None:
                conn.execute(insert(_S).values(name="evaluated_at", value=t))
                return True
            if not force and last > t - every_seconds:
                return False
            return conn.execute(update(_S).where(and_(_S.c.name == "evaluated_at", _S.c.value == last))
                                .values(value=t)).rowcount == 1

    def purge_monitoring(self, unmatched_seconds: float, keep_seconds: float) -> dict[str, int]:
        """Retention: reports no study matched within ``unmatched_seconds``; everything older than ``keep_seconds``
        (baselines excepted: an operator unpins them). Returns what was deleted, per table."""
        t = now()
        old = t - keep_seconds
        with self.engine.begin() as conn:
            out = {
                "reports": conn.execute(delete(_R).where(or_(
                    and_(_R.c.matched_at.is_(None), _R.c.received_at < t - unmatched_seconds),
                    _R.c.received_at < old))).rowcount,
                "observations": conn.execute(delete(_O).where(_O.c.observed_at < old)).rowcount,
                "calls": conn.execute(delete(_C).where(_C.c.at < old)).rowcount,
                "drift": conn.execute(delete(_D).where(_D.c.evaluated_at < old)).rowcount,
                "alerts": conn.execute(delete(_A).where(and_(_A.c.cleared_at.is_not(None),
                                                             _A.c.cleared_at < old))).rowcount,
            }
        return out
