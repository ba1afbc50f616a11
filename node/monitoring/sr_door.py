"""The DICOM door: a radiologist's SR (Basic Text, Enhanced or Comprehensive SR) stored to the node's SCP.

Nothing happens on the receive path: the SR is recorded like any instance. When its study is decided (the quiet
timer, :func:`node.flow.decide.check_study`, which reads every header of the study anyway),
:func:`take_reports` sets apart the SRs that are a radiologist's report and takes them as reports; they are never
given to a rule. An SR is *not* a radiologist's report when the node wrote it (its SOP Instance UID is one of the
node's results, or its equipment is this node's), when it names a Processing Algorithm (an AI result, IHE AIR),
or when it holds no text (a measurement or CAD SR).

A report that is all that came since the study's jobs were made does not run the models again: the study is
closed with a note and the AI's results stand (:func:`take_reports` says so; the decision then plans nothing).

Per study one report is kept (a later SR replaces the labels of an earlier one): its status from the SR's
VerificationFlag and PredecessorDocumentsSequence (VERIFIED: final; with predecessors: corrected; UNVERIFIED:
preliminary), its time from ContentDate/ContentTime, its study from StudyInstanceUID and AccessionNumber.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import pydicom

from converters.sr_text import SR_STORAGE_CLASSES, report_text
from dicom_out.algorithm import NODE_MANUFACTURER, PROCESSING_ALGORITHM_CODE_VALUE
from node.monitoring.intake import IncomingReport, decide, source_key

log = logging.getLogger(__name__)


def _is_ai(ds: pydicom.Dataset) -> bool:
    if str(ds.get("Manufacturer", "") or "").strip() == NODE_MANUFACTURER:
        return True
    for item in ds.get("ContributingEquipmentSequence") or []:
        for purpose in item.get("PurposeOfReferenceCodeSequence") or []:
            if purpose.get("CodeValue") == PROCESSING_ALGORITHM_CODE_VALUE:
                return True
    return False


def is_radiologist_sr(ds: pydicom.Dataset, own_uids: set[str]) -> bool:
    """An SR of a narrative class that neither this node nor another AI wrote."""
    return (str(ds.get("SOPClassUID", "")) in SR_STORAGE_CLASSES
            and str(ds.get("SOPInstanceUID", "")) not in own_uids and not _is_ai(ds))


def sr_time(ds: pydicom.Dataset) -> float | None:
    """ContentDate + ContentTime as POSIX seconds (local time), None when absent or unreadable."""
    day = str(ds.get("ContentDate", "") or "")
    clock = (str(ds.get("ContentTime", "") or "").split(".")[0] + "000000")[:6]
    try:
        return time.mktime(time.strptime(day + clock, "%Y%m%d%H%M%S")) if day else None
    except ValueError:
        return None


def read_sr(ds: pydicom.Dataset) -> IncomingReport | None:
    """The report an SR carries; None when it holds no text."""
    text = report_text(ds)
    if not text.strip():
        return None
    verified = str(ds.get("VerificationFlag", "") or "").upper() == "VERIFIED"
    status = ("corrected" if verified and ds.get("PredecessorDocumentsSequence") else
              "final" if verified else "preliminary")
    study = str(ds.get("StudyInstanceUID", "") or "")
    return IncomingReport(door="dicom", key=source_key("dicom", study), text=text, status=status,  # type: ignore[arg-type]
                          study_uid=study or None, accession=str(ds.get("AccessionNumber", "") or "") or None,
                          reported_at=sr_time(ds))


def take_reports(svc: Any, study_uid: str, headers: Sequence[pydicom.Dataset]) -> tuple[list[pydicom.Dataset], bool]:
    """Take the radiologists' SRs among a study's headers as reports.

    Returns (the headers rules may match: every other instance, whether images came since the study's jobs were
    made): False means only reports came and the models are not run again.
    """
    own = svc.store.result_uids_of(study_uid)
    reports = [ds for ds in headers if is_radiologist_sr(ds, own)]
    if not reports:
        return list(headers), True
    rest = [ds for ds in headers if not any(ds is r for r in reports)]
    if svc.cfg.monitoring.enabled:
        newest = max(reports, key=lambda ds: (sr_time(ds) or 0.0))
        report = read_sr(newest)
        if report is None:
            log.info("study %s: %d SR(s) without text: not a report", study_uid, len(reports))
        else:
            decision = decide(svc.cfg.monitoring, report)
            outcome = svc.store.monitor_write(decision.write) if decision.write is not None else decision.reason
            log.info("study %s: radiologist's SR taken for monitoring: %s (%s, %d finding(s) named)", study_uid,
                     outcome, report.status, decision.findings)
    last_jobs = svc.store.last_jobs_at(study_uid)
    if last_jobs is None:
        return rest, True
    received = {r["sop_instance_uid"]: r["received_at"] for r in svc.store.study_instances(study_uid)}
    fresh = any(received.get(str(ds.get("SOPInstanceUID", "")), 0.0) > last_jobs for ds in rest)
    return rest, fresh
