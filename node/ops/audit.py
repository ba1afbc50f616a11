"""The audit trail: who sent what, and where results went, as JSON lines (DICOM PS3.15 A.5 / IHE ATNA events).

One line per event, appended with ``O_APPEND`` to one file (the SCP process and the worker process write to
the same file; each line is one ``write``), created owner-only (0600). Events carry AE titles, network
addresses, UIDs and outcomes, never patient names, IDs, birth dates or accession numbers. With ``audit.syslog``
set, :mod:`node.audit` sends each event to the audit record repository as a DICOM audit message (the table of
:mod:`node.audit.events` says which message each event makes); the file stays the node's own copy.

=========================  =============================================  ==========================
event                      when                                           DICOM audit event (DCM)
=========================  =============================================  ==========================
node-start, node-stop      serve started / stopped (the OS user)          110100 Application Activity
config-changed             the configuration file differs from the last   110113 Security Alert
association-start          an association was accepted                    110104 (opens a transfer)
association-end            released or aborted, with the instance count   110104 DICOM Instances Transferred
association-rejected       calling AE title or host not allowed           110113 Security Alert
tls-failure                a TLS handshake failed or timed out            110113 Security Alert
instance-received          an instance was stored durably (acknowledged)  110104 DICOM Instances Transferred
instance-quarantined       an instance was refused and kept aside         110104 (outcome: minor failure)
model-request              images/text of a study were sent to a model    110106 Export
job-failed                 a job failed                                   110106 Export (outcome failure)
job-parked                 a job's endpoint failed past its give-up time  110106 Export (outcome: serious failure)
result-sent                a result was delivered to a destination        110104 DICOM Instances Transferred
result-parked              a result could not be delivered                110104 (outcome: serious failure)
prior-query                a C-FIND / QIDO-RS for a prior study           110112 Query
prior-retrieved            prior instances retrieved (C-GET, WADO-RS)     110104 DICOM Instances Transferred
study-deleted              retention purged a study                       110105 DICOM Study Deleted
action                     retry, retract or rerun, by whom (CLI, HTTP)   110103 DICOM Instances Accessed
results-rejected           the IOCM rejection note of a retract           110103 (details of the action)
study-rerun                the new jobs of a rerun                        110103 (details of the action)
user-login[-failed]        a person logged in (or failed to)              110114 User Authentication
user-logout                a person logged out                            110114 User Authentication
token-refused              a bearer token was refused                     110113 Security Alert
report-sent                an ORU / FHIR Bundle reached the RIS / EHR     110106 Export
report-parked              a report could not be delivered                110106 Export (outcome: serious failure)
verify-query               the C-FIND of verify_by: c-find before a resend 110112 Query
hl7-received               the MLLP listener took or refused a message    110111 Procedure Record
mpps-received              an MPPS N-CREATE / N-SET (taken or refused)    110111 Procedure Record
ian-received               an IAN (taken or refused)                      110111 Procedure Record
workitem-claimed           an AIW-I workitem claimed (IN PROGRESS)        110111 Procedure Record
workitem-completed         ... COMPLETED with its outputs                 110111 Procedure Record
workitem-canceled          ... CANCELED with the reason                   110111 Procedure Record
workitem-query             a worklist search that returned workitems      110112 Query
inputs-retrieved           a workitem's inputs retrieved (C-GET, WADO-RS) 110104 DICOM Instances Transferred
=========================  =============================================  ==========================

The workflow events' messages are made by :mod:`node.audit.workflow_events`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVENT_CODES = {
    "node-start": ("110100", "Application Activity"),
    "node-stop": ("110100", "Application Activity"),
    "config-changed": ("110113", "Security Alert"),
    "association-start": ("110104", "DICOM Instances Transferred"),
    "association-end": ("110104", "DICOM Instances Transferred"),
    "association-rejected": ("110113", "Security Alert"),
    "tls-failure": ("110113", "Security Alert"),
    "instance-received": ("110104", "DICOM Instances Transferred"),
    "instance-quarantined": ("110104", "DICOM Instances Transferred"),
    "model-request": ("110106", "Export"),
    "job-failed": ("110106", "Export"),
    "job-parked": ("110106", "Export"),
    "result-sent": ("110104", "DICOM Instances Transferred"),
    "result-parked": ("110104", "DICOM Instances Transferred"),
    "prior-query": ("110112", "Query"),
    "prior-retrieved": ("110104", "DICOM Instances Transferred"),
    "study-deleted": ("110105", "DICOM Study Deleted"),
    "action": ("110103", "DICOM Instances Accessed"),
    "results-rejected": ("110103", "DICOM Instances Accessed"),  # an IOCM rejection note queued (a retract)
    "study-rerun": ("110103", "DICOM Instances Accessed"),
    "user-login": ("110114", "User Authentication"),
    "user-login-failed": ("110114", "User Authentication"),
    "user-logout": ("110114", "User Authentication"),
    "token-refused": ("110113", "Security Alert"),
    "report-sent": ("110106", "Export"),
    "report-parked": ("110106", "Export"),
    "verify-query": ("110112", "Query"),
    "hl7-received": ("110111", "Procedure Record"),
    "mpps-received": ("110111", "Procedure Record"),
    "ian-received": ("110111", "Procedure Record"),
    "workitem-claimed": ("110111", "Procedure Record"),
    "workitem-completed": ("110111", "Procedure Record"),
    "workitem-canceled": ("110111", "Procedure Record"),
    "workitem-query": ("110112", "Query"),
    "inputs-retrieved": ("110104", "DICOM Instances Transferred"),
}

# ATNA EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure, 12 major failure
OUTCOMES = {"success": 0, "minor-failure": 4, "serious-failure": 8, "major-failure": 12}


class AuditLog:
    """Appends audit events to one file; thread-safe; never raises into the caller."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def record(self, event: str, outcome: str = "success", **fields: Any) -> None:
        """Append one event. ``fields`` must hold UIDs, AE titles, addresses, counts: no patient data."""
        if self.path is None:
            return
        code, meaning = EVENT_CODES.get(event, ("", ""))
        doc = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
               "event_id": {"code": code, "scheme": "DCM", "meaning": meaning},
               "outcome": OUTCOMES.get(outcome, 0), "node_host": self._host, "pid": os.getpid(), **fields}
        line = (json.dumps(doc, default=str, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
        except OSError as exc:  # the audit trail must not stop the node; the failure itself is logged
            log.error("cannot write the audit trail %s: %s", self.path, exc.strerror)


_LOGS: dict[Path | None, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def audit_log(cfg: Any) -> AuditLog:
    """The process-wide :class:`AuditLog` of a :class:`~node.config.NodeConfig` (one per file)."""
    path = cfg.audit_path
    with _LOGS_LOCK:
        if path not in _LOGS:
            _LOGS[path] = AuditLog(path)
        return _LOGS[path]


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event of an audit file (for tests and tools)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
