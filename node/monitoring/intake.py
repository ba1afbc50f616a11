"""What the three report doors share: one :class:`IncomingReport` in, its labels kept (never its text, by default).

Each door (HL7 ORU^R01 on the MLLP listener, a FHIR DiagnosticReport on the HTTP side, an SR stored to the SCP)
reads its own format into an :class:`IncomingReport`; :func:`report_row` extracts the findings
(:mod:`node.monitoring.extract`) and makes the row of ``monitor_reports``: the study UID as given, the accession
number only as a hash, the text only with ``monitoring.keep_report_text``. :func:`decide` says what to do with it:
keep it, withdraw an earlier version (a cancelled report), or leave it (a status the configuration does not take).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from node.monitoring.extract import extract
from node.monitoring.settings import MonitoringSection
from node.store.monitoring import report_write, withdraw_write

#: What a door's status words become ("cancelled": withdraw the report kept from this source, if any)
Status = Literal["final", "corrected", "preliminary", "cancelled", "other"]


def accession_hash(accession: str | None) -> str | None:
    """The pseudonym of an accession number in the monitoring tables (SHA-256, domain separated); None for none."""
    value = (accession or "").strip()
    if not value:
        return None
    return hashlib.sha256(b"dicom-ai-node/accession\x00" + value.encode("utf-8")).hexdigest()


def source_key(door: str, *parts: str) -> str:
    """The identity of a report across its versions (the same source, order and procedure), hashed."""
    return hashlib.sha256("\x00".join([door, *parts]).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IncomingReport:
    """A radiologist's report as a door read it (``text`` is PHI: never logged)."""

    door: str  # hl7 | fhir | dicom
    key: str  # source_key(...): versions of one report share it
    text: str
    status: Status
    study_uid: str | None = None
    accession: str | None = None
    reported_at: float | None = None

    @property
    def identified(self) -> bool:
        """Does it name its study (a study UID or an accession number)?"""
        return bool((self.study_uid or "").strip() or (self.accession or "").strip())


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` chose: ``action`` keep | withdraw | leave, and why (for the door's answer and the log)."""

    action: Literal["keep", "withdraw", "leave"]
    reason: str
    write: Callable[[Any], Any] | None = None
    findings: int = 0


def report_row(cfg: MonitoringSection, report: IncomingReport) -> dict[str, Any]:
    """The ``monitor_reports`` row of ``report`` (labels extracted now; the text only with keep_report_text)."""
    found = extract(report.text, cfg.label_terms)
    return {
        "door": report.door, "source_key": report.key, "study_uid": (report.study_uid or "").strip()[:64] or None,
        "accession_hash": accession_hash(report.accession), "status": report.status,
        "reported_at": report.reported_at or time.time(), "findings": json.dumps(found.findings, sort_keys=True),
        "labels": json.dumps(found.labels, sort_keys=True), "sentences": found.sentences,
        "text": report.text if cfg.keep_report_text else None,
    }


def decide(cfg: MonitoringSection, report: IncomingReport) -> Decision:
    """Keep, withdraw or leave ``report``; the decision carries the database write to run (fn(connection))."""
    if not cfg.enabled:
        return Decision("leave", "monitoring is off (monitoring.enabled: false)")
    if report.status == "cancelled":
        return Decision("withdraw", "the report was cancelled", withdraw_write(report.key))
    if report.status not in cfg.report_statuses:
        return Decision("leave", f"status {report.status} is not taken (monitoring.report_statuses: "
                                 f"{', '.join(cfg.report_statuses)})")
    if not report.identified:
        return Decision("leave", "the report names no study (no accession number, no Study Instance UID)")
    row = report_row(cfg, report)
    return Decision("keep", "kept", report_write(row), len(json.loads(row["findings"])))
