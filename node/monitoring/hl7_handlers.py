"""The HL7 door: a radiologist's ORU^R01 on the node's MLLP listener (hospital-it's handler registry).

Runs inside the transaction that keeps the message, before the ACK (:mod:`node.hl7.handlers`): the report's labels
commit with the message or not at all. What is read (v2.3 to 2.8; IHE RAD-128 / dcm4chee's ORU mapping):

- the study: OBR-18 (accession number, ``msg.accession``) and the Study Instance UID row (OBX-3
  ``113014^DICOM Study^DCM``, OBX-5 the UID) or a ZDS-1;
- the status: OBR-25 F (final), C (corrected), P (preliminary), X (cancelled: the report kept from the same source
  is withdrawn); taken per ``monitoring.report_statuses``;
- the text: every TX, FT, ST and CE row's value (not the study UID row), in order, each under the section its
  OBX-3 text names (indication, technique... are not read for findings; impression; findings otherwise);
- the time: OBR-22 (results report time), else OBR-7, else MSH-7.

Versions of one report share the sending application and facility, the accession (else the filler or placer order
number) and the procedure (OBR-4.1): a correction replaces the earlier labels. The node's own ORU (its AI note row,
``AINOTE``) is left alone: a RIS that echoes it back must not turn the AI's words into a radiologist's. A report that
names no study is refused AE. Nothing of the text is logged.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from typing import Any

import hl7

from node.hl7 import fields
from node.hl7.handlers import InboundMessage, Refusal, handles, node_config
from node.monitoring.extract import NOT_FINDINGS
from node.monitoring.intake import IncomingReport, Status, decide, source_key
from node.monitoring.settings import MonitoringSection

log = logging.getLogger(__name__)

STUDY_UID_CODE = "113014"
AI_NOTE_CODE = "AINOTE"
TEXT_TYPES = ("TX", "FT", "ST", "CE", "CWE")
STATUSES: dict[str, Status] = {"F": "final", "C": "corrected", "P": "preliminary", "X": "cancelled"}
_FT_BREAK = re.compile(r"\\\.br\\", re.IGNORECASE)


def _text(msg: hl7.Message, raw: str) -> str:
    return msg.unescape(_FT_BREAK.sub("\n", raw)).strip()


def section_of(obx3_text: str) -> str:
    """The report section an OBX row belongs to, from its OBX-3 text (one heading per row, so that an indication row
    never swallows the findings row after it)."""
    words = obx3_text.lower()
    for heading in NOT_FINDINGS:
        if re.search(rf"\b{heading}\b", words):
            return heading.capitalize()
    return "Impression" if "impression" in words or "conclusion" in words else "Findings"


def _segments(msg: hl7.Message, name: str) -> list[Any]:
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def hl7_time(value: str) -> float | None:
    """An HL7 TS/DTM (YYYYMMDD[HHMM[SS]][+/-ZZZZ]) as POSIX seconds (local time without an offset); None if unreadable."""
    match = re.match(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$", value.strip())
    if not match:
        return None
    day, hh, mm, ss, zone = match.groups()
    try:
        parts = time.strptime(day + (hh or "00") + (mm or "00") + (ss or "00"), "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if zone:
        offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60 * (1 if zone[0] == "+" else -1)
        return float(calendar.timegm(parts) - offset)
    return float(time.mktime(parts))


def read_oru(msg: InboundMessage) -> IncomingReport | None:
    """The report an ORU^R01 carries (None: the node's own AI report)."""
    parsed = msg.parsed
    obr = _segments(parsed, "OBR")[0] if _segments(parsed, "OBR") else None
    study_uid = ""
    lines: list[str] = []
    for obx in _segments(parsed, "OBX"):
        code = fields.component(obx, 3, 1)
        if code == AI_NOTE_CODE:
            return None
        if code == STUDY_UID_CODE:
            study_uid = study_uid or _text(parsed, fields.component(obx, 5))
            continue
        if fields.component(obx, 2) not in TEXT_TYPES:
            continue
        value_type = fields.component(obx, 2)
        raw = str(obx[5]) if len(obx) > 5 else ""
        value = _text(parsed, fields.component(obx, 5, 2) or fields.component(obx, 5) if value_type in ("CE", "CWE")
                      else raw.replace("~", "\n"))
        if value:
            lines.append(f"{section_of(_text(parsed, fields.component(obx, 3, 2)))}: {value}")
    for zds in _segments(parsed, "ZDS"):
        study_uid = study_uid or _text(parsed, fields.component(zds, 1))
    status = STATUSES.get(fields.component(obr, 25).upper(), "other")
    when = next((t for t in (hl7_time(fields.component(obr, 22)), hl7_time(fields.component(obr, 7)),
                             hl7_time(fields.component(_segments(parsed, "MSH")[0], 7) if _segments(parsed, "MSH")
                                      else "")) if t is not None), None)
    order = msg.accession or fields.component(obr, 3) or fields.component(obr, 2)
    key = source_key("hl7", msg.sending_application, msg.sending_facility, order, fields.component(obr, 4))
    return IncomingReport(door="hl7", key=key, text="\n".join(lines), status=status, study_uid=study_uid or None,
                          accession=msg.accession or None, reported_at=when)


def _settings() -> MonitoringSection:
    cfg = node_config()
    return cfg.monitoring if cfg is not None else MonitoringSection()


@handles("ORU^R01")
def keep_radiologist_report(msg: InboundMessage, conn: Any) -> None:
    """Keep the labels of a radiologist's ORU^R01 (see the module docstring); runs before the ACK."""
    report = read_oru(msg)
    if report is None:
        log.info("HL7 ORU^R01 %s is the node's own AI report: not a radiologist's, left out of monitoring",
                 msg.control_id)
        return
    decision = decide(_settings(), report)
    if decision.action == "leave" and not report.identified:
        raise Refusal("AE", "the report names no study: OBR-18 (accession number) or an OBX 113014 (Study "
                            "Instance UID) is required")
    if decision.write is not None:
        outcome = decision.write(conn)
        log.info("HL7 ORU^R01 %s: radiologist's report %s (%s, %d finding(s) named)", msg.control_id,
                 decision.action if decision.action != "keep" else outcome, report.status, decision.findings)
    else:
        log.info("HL7 ORU^R01 %s: not taken for monitoring: %s", msg.control_id, decision.reason)
