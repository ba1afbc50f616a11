"""Retract and re-run: what a radiologist's "this AI result is wrong" turns into (`dicom-node retract` / `rerun`).

:func:`retract` sends an IHE IOCM rejection note (a Key Object Selection document, :mod:`dicom_out.kos`) listing
the node's results of a study (SR, GSPS, SEG; of one rule with ``rule``) to every destination that received them,
or may be receiving them (a send in flight), through the outbox like any result. Rows of those results not sent
yet are dropped, so nothing rejected leaves afterwards. Results rejected by an earlier note are not listed again.
The note's UIDs derive from the study, the rejected UIDs and the reason: running the same command twice sends
one note.

:func:`rerun` decides the study again as a new version (the quiet timer's decision, on the stored instances):
one job per matching rule (or only ``rule``), queued for the worker. The new results have new UIDs; a new SR names
the SR it replaces in PredecessorDocumentsSequence (the result of the same rule in the previous version, as after
a late instance). GSPS and SEG have no such attribute in their IODs: the replaced ones are named by the node's
database (same rule, earlier study version) and withdrawn from the PACS with :func:`retract`.

The reports sent to a RIS or an EHR (kind ``report``) are retracted there too (:mod:`node.flow.report_retraction`);
a re-run's new report is a correction of the previous one (:mod:`node.reports.job`).

Both are plain functions so that the command line and the HTTP side call the same code.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from dicom_out.kos import REJECTION_TITLES, build_rejection_note
from node.config import NodeConfig
from node.flow.decide import plan_study, waiting_plans
from node.flow.queue import Queue
from node.flow.report_retraction import retract_reports
from node.ops.audit import audit_log
from node.store.spool import Spool, write_durably
from node.store.state import Store

log = logging.getLogger(__name__)

REASONS = tuple(REJECTION_TITLES)  # quality | safety | incorrect-worklist


class RetractError(Exception):
    """The study, rule or results asked for do not exist, or cannot be handled now (the message says why)."""


@dataclass
class RetractReport:
    """What :func:`retract` did."""

    study_uid: str
    reason: str
    rejected: list[str] = field(default_factory=list)  # SOP Instance UIDs listed in the note
    note_uid: str | None = None  # the KOS (stored; sent only where the results went)
    destinations: list[str] = field(default_factory=list)
    unsent_dropped: list[str] = field(default_factory=list)  # results that had not left yet: never will
    already_rejected: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)  # retractions of RIS/EHR reports (node/flow/report_retraction.py)
    report_destinations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for --json and the HTTP side)."""
        return asdict(self)

    def summary(self) -> str:
        """One paragraph for the operator."""
        lines = [f"study {self.study_uid}: {len(self.rejected)} result(s) rejected ({self.reason})"]
        if self.reports:
            lines.append(f"  report retraction(s) {', '.join(self.reports)} queued for: "
                         f"{', '.join(self.report_destinations) or 'none (no report had left)'}")
        if self.destinations:
            lines.append(f"  rejection note (KOS) {self.note_uid} queued for: {', '.join(self.destinations)}")
        else:
            lines.append("  no destination had received them: no rejection note needed")
        if self.unsent_dropped:
            lines.append(f"  not sent yet, now never sent: {', '.join(self.unsent_dropped)}")
        if self.already_rejected:
            lines.append(f"  rejected earlier (left out): {len(self.already_rejected)}")
        lines += [f"  rejected {uid}" for uid in self.rejected]
        return "\n".join(lines)


@dataclass
class RerunReport:
    """What :func:`rerun` queued."""

    study_uid: str
    version: int
    jobs: list[int] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # rules waiting for zero-shot labels

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for --json and the HTTP side)."""
        return asdict(self)

    def summary(self) -> str:
        """One paragraph for the operator."""
        text = (f"study {self.study_uid}: version {self.version}, {len(self.jobs)} job(s) queued "
                f"({', '.join(self.rules) or 'none'})")
        if self.waiting:
            text += f"; waiting for classification: {', '.join(self.waiting)}"
        return text + "\n  new SRs name the SRs they replace (PredecessorDocumentsSequence)"


def _rejected_before(rows: list[dict[str, Any]]) -> set[str]:
    """SOP Instance UIDs listed by the study's earlier rejection notes."""
    out: set[str] = set()
    for row in rows:
        if row["kind"] != "kos":
            continue
        try:
            note = pydicom.dcmread(row["path"], stop_before_pixels=True)
        except OSError:
            continue
        for series in note.get("CurrentRequestedProcedureEvidenceSequence", [])[0].get("ReferencedSeriesSequence", []):
            out.update(str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence)
    return out


def _may_have(row: dict[str, Any], now: float) -> bool:
    """An outbox row whose result reached (or may be reaching) its destination."""
    return row["state"] == "delivered" or (row["lease_until"] is not None and row["lease_until"] >= now)


def retract(cfg: NodeConfig, store: Store, queue: Queue, study_uid: str, *, rule: str | None = None,
            reason: str) -> RetractReport:
    """Reject the node's results of ``study_uid`` (of ``rule`` only, if given) at every destination that got them.

    Raises:
        RetractError: unknown reason, or no result of the node for that study (and rule) left to reject.
    """
    if reason not in REJECTION_TITLES:
        raise RetractError(f"unknown reason {reason!r}; allowed: {', '.join(REASONS)}")
    rows = store.study_results(study_uid)
    retracted, report_dests = retract_reports(rows, store=store, storage_dir=cfg.storage_dir, rule=rule,
                                              reason=reason, may_have=_may_have)  # the RIS/EHR reports
    for dest in report_dests:
        queue.enqueue_delivery(dest)
    wanted = [r for r in rows if r["kind"] not in ("kos", "report") and (rule is None or r["rule_name"] == rule)]
    if not wanted and not retracted:
        what = f"rule {rule!r} of study {study_uid}" if rule else f"study {study_uid}"
        raise RetractError(f"the node holds no result of {what} (never processed, or purged by retention)")
    earlier = _rejected_before(rows)
    report = RetractReport(study_uid=study_uid, reason=reason, reports=retracted, report_destinations=report_dests,
                           already_rejected=[r["sop_instance_uid"] for r in wanted if r["sop_instance_uid"] in earlier])
    todo = [r for r in wanted if r["sop_instance_uid"] not in earlier]
    if not todo and retracted:
        audit_log(cfg).record("results-rejected", study_uid=study_uid, rule=rule, reason=reason, rejected=[],
                              reports=retracted, destinations=report_dests)
        return report
    if not todo:
        raise RetractError(f"every result of study {study_uid} asked for was rejected already")
    t = time.time()
    destinations = sorted({o["destination"] for r in todo for o in r["outbox"] if _may_have(o, t)})
    report.rejected = [r["sop_instance_uid"] for r in todo]
    report.unsent_dropped = [r["sop_instance_uid"] for r in todo if not any(_may_have(o, t) for o in r["outbox"])]
    report.destinations = destinations
    headers = [pydicom.dcmread(r["path"], stop_before_pixels=True) for r in todo]
    seed = [study_uid, reason, *sorted(report.rejected)]
    note = build_rejection_note(headers, reason,
                                series_instance_uid=generate_uid(entropy_srcs=["kos-series", *seed]),
                                sop_instance_uid=generate_uid(entropy_srcs=["kos", *seed]),
                                description=f"Rejected by dicom-ai-node operator ({reason})")
    report.note_uid = str(note.SOPInstanceUID)
    # Stored even when nothing had left (no outbox row then): the results count as rejected from now on.
    path = Spool(cfg.storage_dir).result_path(study_uid, report.note_uid)
    buf = io.BytesIO()
    note.save_as(buf, enforce_file_format=True)
    write_durably(Path(path), buf.getvalue())
    row = {"sop_instance_uid": report.note_uid, "job_id": todo[0]["job_id"], "study_uid": study_uid,
           "series_uid": str(note.SeriesInstanceUID), "sop_class_uid": str(note.SOPClassUID), "path": str(path)}
    store.add_rejection_note(row, destinations, report.rejected)
    for dest in destinations:
        queue.enqueue_delivery(dest)
    audit_log(cfg).record("results-rejected", study_uid=study_uid, rule=rule, reason=reason,
                          rejected=report.rejected, note_uid=report.note_uid, destinations=destinations,
                          reports=retracted, report_destinations=report_dests)
    log.info("study %s: %d result(s) rejected (%s); note %s to %s", study_uid, len(report.rejected), reason,
             report.note_uid, destinations)
    return report


def rerun(cfg: NodeConfig, store: Store, queue: Queue, study_uid: str, *, rule: str | None = None) -> RerunReport:
    """Decide ``study_uid`` again (every matching rule, or only ``rule``) and queue its jobs.

    Raises:
        RetractError: unknown study or rule, the study still receiving, its instances purged, or no rule matching.
    """
    rules = [r for r in cfg.rules if rule is None or r.name == rule]
    if not rules:
        raise RetractError(f"no rule named {rule!r} in {cfg.source_path or 'the configuration'}")
    instances = store.study_instances(study_uid)
    if not instances:
        raise RetractError(f"the node holds no instance of study {study_uid} (never received, or purged)")
    headers = []
    for row in instances:
        try:
            headers.append(pydicom.dcmread(row["path"], stop_before_pixels=True))
        except OSError:
            raise RetractError(f"instance {row['sop_instance_uid']} of study {study_uid} is no longer in the "
                               "spool (purged by retention?): the study must be sent again") from None
    plans = plan_study(rules, headers)
    waiting = [w for w in waiting_plans(cfg, headers) if any(r.name == w[0] for r in rules)]
    if not plans and not waiting:
        raise RetractError(f"no rule {'named ' + repr(rule) + ' ' if rule else ''}matches study {study_uid} now")
    try:
        version = store.begin_rerun(study_uid)
    except (LookupError, ValueError) as exc:
        raise RetractError(str(exc)) from None
    job_ids = store.create_jobs(study_uid, version, [(p.rule.name, p.rule.endpoint, p.series_uids) for p in plans],
                                waiting=waiting)
    report = RerunReport(study_uid=study_uid, version=version, jobs=job_ids, rules=[p.rule.name for p in plans],
                         waiting=[w[0] for w in waiting])
    for job_id in job_ids:
        queue.enqueue_job(job_id)  # a waiting job returns at once; the sweep resolves it (node/flow/decide.py)
    audit_log(cfg).record("study-rerun", study_uid=study_uid, rule=rule, version=version, jobs=job_ids)
    log.info("study %s re-run as version %d: jobs %s", study_uid, version, job_ids)
    return report
