"""What the status page shows, read from the database (and, for identifiers, from one header per study)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pydicom
from sqlalchemy import func, select

from node.store.schema import instances, jobs, outbox, quarantine, results, studies
from node.store.state import Store


def identity(store: Store, study_uid: str, show_phi: bool) -> dict[str, str]:
    """Patient name, ID and accession when ``show_phi``; otherwise a hash of the accession number only."""
    with store.engine.connect() as conn:
        path = conn.execute(select(instances.c.path).where(instances.c.study_uid == study_uid).limit(1)).scalar()
    if path is None:
        return {}
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "PatientName", "PatientID", "AccessionNumber", "StudyDescription"])
    except Exception:  # a purged or unreadable file: the page shows UIDs only
        return {}
    accession = str(ds.get("AccessionNumber", "") or "")
    if show_phi:
        return {"patient": str(ds.get("PatientName", "")), "patient_id": str(ds.get("PatientID", "")),
                "accession": accession, "description": str(ds.get("StudyDescription", ""))}
    digest = hashlib.sha256(accession.encode()).hexdigest()[:12] if accession else "-"
    return {"accession_hash": digest}


def study_rows(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent studies with their jobs (rule: state) and where their results were sent."""
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(studies).where(studies.c.is_prior.is_(False))
                                              .order_by(studies.c.last_received_at.desc()).limit(limit)).mappings()]
        uids = [r["study_uid"] for r in rows]
        counts = dict(conn.execute(select(instances.c.study_uid, func.count()).where(instances.c.study_uid.in_(uids))
                                   .group_by(instances.c.study_uid)).all())
        job_rows = conn.execute(select(jobs.c.study_uid, jobs.c.rule_name, jobs.c.state)
                                .where(jobs.c.study_uid.in_(uids)).order_by(jobs.c.id)).all()
        sends = conn.execute(select(results.c.study_uid, outbox.c.destination, outbox.c.state)
                             .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                             .where(results.c.study_uid.in_(uids))).all()
    for r in rows:
        r["instances"] = counts.get(r["study_uid"], 0)
        r["jobs"] = [(rule, state) for s, rule, state in job_rows if s == r["study_uid"]]
        dests: dict[str, dict[str, int]] = {}
        for s, dest, state in sends:
            if s == r["study_uid"]:
                dests.setdefault(dest, {}).setdefault(state, 0)
                dests[dest][state] += 1
        r["sends"] = dests
        r["results"] = sum(sum(v.values()) for v in dests.values())
    return rows


def study_detail(store: Store, study_uid: str) -> dict[str, Any] | None:
    """One study: its row, instances per series, jobs, results, outbox rows and a timeline of all of them."""
    with store.engine.connect() as conn:
        study = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
        if study is None:
            return None
        series = conn.execute(select(instances.c.series_uid, instances.c.sop_class_uid, func.count(),
                                     func.min(instances.c.received_at), func.max(instances.c.received_at))
                              .where(instances.c.study_uid == study_uid)
                              .group_by(instances.c.series_uid, instances.c.sop_class_uid)).all()
        job_rows = [dict(r) for r in conn.execute(select(jobs).where(jobs.c.study_uid == study_uid)
                                                  .order_by(jobs.c.id)).mappings()]
        result_rows = [dict(r) for r in conn.execute(select(results).where(results.c.study_uid == study_uid)
                                                     .order_by(results.c.created_at)).mappings()]
        send_rows = [dict(r) for r in conn.execute(
            select(outbox, results.c.kind).join(results, results.c.sop_instance_uid == outbox.c.result_uid)
            .where(results.c.study_uid == study_uid).order_by(outbox.c.id)).mappings()]
    timeline: list[tuple[float, str]] = []
    for series_uid, sop_class, n, first, last in series:
        timeline.append((first, f"received {n} instance(s) of series {series_uid} "
                                f"({pydicom.uid.UID(sop_class).name or sop_class}), last at {clock(last)}"))
    decided = store.decisions_of(study_uid)
    for d in decided:  # node/store/workflow.py: which trigger decided each version
        after = (f", {d['decided_at'] - d['last_instance_at']:.2f} s after its last instance"
                 if d["last_instance_at"] else "")
        timeline.append((d["decided_at"], f"study complete, version {d['version']}: trigger {d['trigger']}{after} "
                                          f"({d['detail'] or ''})"))
    for n in store.notices_of(study_uid):
        timeline.append((n["updated_at"], f"{n['kind'].upper()} {n['uid']} from {n['calling_ae'] or '-'}: "
                                          f"{n['state']}, {n['listed']} instance(s) listed, {n['missing']} not received"))
    if study["completed_at"] and not any(d["version"] == study["version"] for d in decided):
        timeline.append((study["completed_at"], f"study complete, version {study['version']}"))
    for j in job_rows:
        timeline.append((j["created_at"], f"job #{j['id']} created: rule {j['rule_name']} -> endpoint {j['endpoint']}"))
        took = f" (endpoint {j['endpoint_seconds']:.2f} s)" if j["endpoint_seconds"] else ""
        timeline.append((j["updated_at"], f"job #{j['id']} {j['state']} after {j['attempts']} attempt(s){took}: "
                                          f"{j['outcome'] or ''}"))
    for r in result_rows:
        timeline.append((r["created_at"], f"result {r['kind'].upper()} {r['sop_instance_uid']} written"))
    for s in send_rows:
        when = s["delivered_at"] or s["next_attempt_at"]
        timeline.append((when, f"{s['kind'].upper()} -> {s['destination']}: {s['state']}, status "
                               f"{s['last_status'] or '-'}, {s['attempts']} attempt(s) {s['error'] or ''}"))
    timeline.sort(key=lambda e: e[0])
    return {"study": dict(study), "series": series, "jobs": job_rows, "results": result_rows, "sends": send_rows,
            "timeline": [(clock(t), what) for t, what in timeline]}


def outbox_rows(store: Store, limit: int = 200) -> dict[str, list[dict[str, Any]]]:
    """Pending and parked outbox rows, failed jobs and the quarantine."""
    with store.engine.connect() as conn:
        def rows(state: str) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(
                select(outbox, results.c.study_uid, results.c.kind)
                .join(results, results.c.sop_instance_uid == outbox.c.result_uid)
                .where(outbox.c.state == state).order_by(outbox.c.id).limit(limit)).mappings()]
        failed = [dict(r) for r in conn.execute(select(jobs).where(jobs.c.state == "failed")
                                                .order_by(jobs.c.id.desc()).limit(limit)).mappings()]
        quarantined = [dict(r) for r in conn.execute(select(quarantine.c.reason, quarantine.c.calling_ae,
                                                            quarantine.c.sop_instance_uid, quarantine.c.received_at)
                                                     .order_by(quarantine.c.id.desc()).limit(limit)).mappings()]
        return {"pending": rows("pending"), "parked": rows("parked"), "failed_jobs": failed, "quarantine": quarantined}


def endpoint_health(store: Store, endpoints: list[str], window_seconds: float = 86400,
                    evidence_jobs: int = 200) -> list[dict[str, Any]]:
    """Per endpoint over the last day: jobs done/failed/retrying, its health, the last outcome and mean time.

    Health is about the endpoint, not about one input (:func:`node.flow.circuit.fault_of`): ``unavailable`` while
    its circuit is open (network, 429, 5xx, repeated 408s); ``failing`` when the newest job that says anything about
    it failed on an endpoint-level cause (auth, a request the gateway refused, an unreadable reply) or was parked;
    ``ok`` otherwise. A job the model refused (424 with an inner 4xx), failed on (424, inner 5xx) or timed out on
    (408) shows the endpoint answered: it never counts against it, nor does a job that failed before or after
    its call (a study mixing patients, an image the converter refused)."""
    from node.flow.circuit import fault_of

    since = time.time() - window_seconds
    open_circuits = {r["endpoint"]: r for r in store.circuits()}
    out = []
    with store.engine.connect() as conn:
        for name in endpoints:
            by_state = dict(conn.execute(select(jobs.c.state, func.count()).where(
                jobs.c.endpoint == name, jobs.c.updated_at >= since).group_by(jobs.c.state)).all())
            recent = conn.execute(select(jobs.c.state, jobs.c.outcome, jobs.c.updated_at)
                                  .where(jobs.c.endpoint == name).order_by(jobs.c.updated_at.desc(), jobs.c.id.desc())
                                  .limit(evidence_jobs)).all()
            last = recent[0] if recent else None
            mean = conn.execute(select(func.avg(jobs.c.endpoint_seconds)).where(
                jobs.c.endpoint == name, jobs.c.updated_at >= since)).scalar()
            circuit = open_circuits.get(name)
            evidence = next(((fault, row) for row in recent if (fault := fault_of(row[0], row[1])) is not None),
                            None)
            if circuit is not None:
                health, why = "unavailable", (f"circuit {circuit['state']} since {clock(circuit['opened_at'])}: "
                                              f"{circuit['reason'] or ''}")
            elif evidence is not None and evidence[0] == "endpoint":
                health, why = "failing", f"job {evidence[1][0]} at {clock(evidence[1][2])}: {evidence[1][1] or ''}"
            else:
                health, why = "ok", ""
            out.append({"name": name, "states": by_state, "healthy": health == "ok", "health": health, "why": why,
                        "mean_seconds": mean,
                        "last": None if last is None else {"state": last[0], "outcome": last[1],
                                                           "at": clock(last[2])}})
    return out


def result_row(store: Store, sop_uid: str) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        row = conn.execute(select(results).where(results.c.sop_instance_uid == sop_uid)).mappings().first()
    return None if row is None else dict(row)


def instance_path(store: Store, sop_uid: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(instances.c.path).where(instances.c.sop_instance_uid == sop_uid)).scalar()


def clock(t: float | None) -> str:
    """A POSIX time as local 'YYYY-MM-DD HH:MM:SS' ('-' for none)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def as_json(value: Any) -> str:
    return json.dumps(value, default=str)
