"""Retracting a rule's report at the RIS and the EHR (part of :func:`node.flow.retract.retract`).

Per rule, the newest version of its report on the study is retracted once: a new report of status ``retracted``
(:func:`node.reports.job.retraction_of`) goes through the outbox to every destination that got, or may be
getting, any version of it: an ORU with the destination's ``retraction`` (OBR-25 / OBX-11) to a RIS, a Bundle with
everything ``entered-in-error`` to an EHR. Report rows never sent are dropped, as for the DICOM results.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from node.reports.job import KIND, load, report_path, retraction_of
from node.store.spool import Spool, write_durably


def retract_reports(rows: list[dict[str, Any]], *, store: Any, storage_dir: Path, rule: str | None, reason: str,
                    may_have: Callable[[dict[str, Any], float], bool]) -> tuple[list[str], list[str]]:
    """Retract the reports among ``rows`` (the study's results, with their outbox rows) of ``rule`` (or every rule).

    Returns (retraction report UIDs, destinations they are queued for). A report retracted before is left alone.
    """
    t = time.time()
    reports = [(r, load(r["path"])) for r in rows if r["kind"] == KIND and (rule is None or r["rule_name"] == rule)]
    reports = [(r, rep) for r, rep in reports if rep is not None]
    done = {rep.replaces for _, rep in reports if rep.status == "retracted"}
    by_rule: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for r, rep in reports:
        if rep.status != "retracted":
            by_rule.setdefault(r["rule_name"], []).append((r, rep))
    uids: list[str] = []
    destinations: set[str] = set()
    for group in by_rule.values():
        row, newest = max(group, key=lambda item: (item[1].study_version, item[1].created_at))
        if newest.uid in done:
            continue
        dests = sorted({o["destination"] for r, _ in group for o in r["outbox"] if may_have(o, t)})
        gone = retraction_of(newest, reason, created_at=t)
        path = report_path(Spool(storage_dir).result_path(row["study_uid"], gone.uid))
        write_durably(path, gone.to_json())
        note = {"sop_instance_uid": gone.uid, "job_id": row["job_id"], "study_uid": row["study_uid"],
                "series_uid": "", "sop_class_uid": "", "path": str(path)}
        store.add_rejection_note(note, dests, [r["sop_instance_uid"] for r, _ in group], kind=KIND)
        uids.append(gone.uid)
        destinations.update(dests)
    return uids, sorted(destinations)
