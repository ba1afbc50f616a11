"""The report of a finished job: built once, stored as a result of kind ``report``, delivered by the outbox.

:func:`report_result` runs in the worker when a job wrote results and a destination of its rule receives
``report`` (``type: hl7v2`` or ``type: fhir``). The report's identifiers derive from the job and the study (see
:mod:`node.reports.model`); it is written to the spool (``<uid>.json`` beside the DICOM results) before the job's
transaction commits, and the outbox row of each destination names it like any result. A re-run of the study (a
new version) makes a ``corrected`` report that names the one it replaces and what that one said; a retraction
(:func:`retraction_of`) is a new report of status ``retracted`` with the retracted one's content.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pydicom
from pydicom.uid import generate_uid

from node.reports.model import Content, Report
from node.reports.read import UnreadableResult, read_results
from node.store.spool import write_durably

log = logging.getLogger(__name__)

KIND = "report"


def report_uid(job_uid: str) -> str:
    """The report version of one job: the same on every run of the job, new for a new job (a new study version)."""
    return generate_uid(entropy_srcs=[job_uid, KIND])


def report_id(study_uid: str, rule: str) -> str:
    """The identifier shared by every version of one rule's report on one study."""
    return generate_uid(entropy_srcs=["dicom-ai-node/report", study_uid, rule])


def build_report(*, job: dict[str, Any], content: Content, previous: Report | None,
                 created_at: float | None = None) -> Report:
    """Version ``job['study_version']`` of the rule's report; ``corrected`` when an earlier version exists."""
    return Report(uid=report_uid(job["job_uid"]), report_id=report_id(job["study_uid"], job["rule_name"]),
                  rule=job["rule_name"], study_version=int(job["study_version"]),
                  status="corrected" if previous is not None else "preliminary",
                  created_at=time.time() if created_at is None else created_at, content=content,
                  replaces=previous.uid if previous is not None else None,
                  superseded=previous.content if previous is not None else None)


def retraction_of(report: Report, reason: str, created_at: float | None = None) -> Report:
    """The retraction of ``report`` (its content, status ``retracted``); the same UID for the same reason."""
    return report.model_copy(update={
        "uid": generate_uid(entropy_srcs=["dicom-ai-node/retraction", report.uid, reason]),
        "status": "retracted", "created_at": time.time() if created_at is None else created_at,
        "replaces": report.uid, "superseded": None, "reason": reason})


def with_order_numbers(content: Content, order: dict[str, Any] | None) -> Content:
    """Placer and filler order numbers from a matched HL7 order where the DICOM header has none."""
    if order is None:
        return content
    update = {k: order[f] for k, f in (("placer_order", "placer_number"), ("filler_order", "filler_number"))
              if not getattr(content.study, k) and order.get(f)}
    return content.model_copy(update={"study": content.study.model_copy(update=update)}) if update else content


def report_path(result_path: Path) -> Path:
    """Where a report is stored: beside the DICOM results, ``<uid>.json``."""
    return result_path.with_suffix(".json")


def load(path: str | Path) -> Report | None:
    """A stored report, or None when its file is gone (purged) or unreadable."""
    try:
        return Report.from_json(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def report_result(*, job: dict[str, Any], results: Sequence[tuple[str, pydicom.Dataset]],
                  source_path: Path | None, result_path: Callable[[str], Path],
                  previous_path: str | None, order_for: Callable[[str], dict[str, Any] | None]) -> dict[str, Any] | None:
    """Build, store and describe (a ``results`` row) the report of a job's written results; None when there is none.

    ``result_path(uid)``: the spool path of a result; ``previous_path``: the stored report of the rule's earlier
    study version, if any; ``order_for(accession)``: the HL7 order stored for an accession number, if any.
    A result the reader does not understand is logged and leaves no report (the DICOM results still go out).
    """
    source = None
    if source_path is not None:
        try:
            source = pydicom.dcmread(source_path, stop_before_pixels=True)
        except (OSError, ValueError):
            source = None
    try:
        content = read_results(results, source)
    except UnreadableResult as exc:
        log.error("job %s: no report for the RIS/EHR: %s", job["id"], exc)
        return None
    if content is None:
        return None
    content = with_order_numbers(content, order_for(content.study.accession) if content.study.accession else None)
    previous = load(previous_path) if previous_path else None
    report = build_report(job=job, content=content, previous=previous)
    path = report_path(result_path(report.uid))
    write_durably(path, report.to_json())
    return {"sop_instance_uid": report.uid, "study_uid": job["study_uid"], "series_uid": "", "sop_class_uid": "",
            "kind": KIND, "path": str(path)}


def job_report_rows(svc: Any, job: dict[str, Any], send_to: Sequence[str],
                    results: Sequence[tuple[str, pydicom.Dataset]], paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The ``report`` result of a job for :func:`node.flow.run.run_job`: [] unless a destination of the rule takes
    reports (``type: hl7v2`` / ``fhir``) and the job wrote an SR or a SEG. ``svc``: the worker's services."""
    cfg = svc.cfg
    if not any(KIND in cfg.destinations[d].results for d in send_to if d in cfg.destinations):
        return []
    try:
        previous = svc.store.previous_result(job["study_uid"], job["rule_name"], job["study_version"], KIND)
        row = report_result(job=job, results=results, source_path=paths[0] if paths else None,
                            result_path=lambda uid: svc.spool.result_path(job["study_uid"], uid),
                            previous_path=previous["path"] if previous else None,
                            order_for=svc.store.order_for_accession)
    except Exception:  # a report bug must not hold back the DICOM results: they still go out
        log.exception("job %s: the report for the RIS/EHR could not be built", job["id"])
        return []
    return [row] if row else []
