"""A :class:`~node.reports.model.Report` as one HL7 v2.5.1 ORU^R01 message (IHE RAD-128 style), built with hl7apy.

The field map is the ORU^R01 table of docs/hospital-it.md. In short: MSH (MSH-10 derived from the report version, MSH-18
from SpecificCharacterSet), PID, PV1, ORC (SC, CM), OBR (OBR-4 procedure, OBR-7 study time, OBR-18 accession,
OBR-24 RAD, OBR-25 P / C / the configured retraction), then OBX rows: the Study Instance UID (113014^DICOM
Study^DCM), per finding its sentence (TX) and code (CWE), per classified image its words (TX), winners (CWE) and
probabilities (NM), per segment its words (TX) and category/type (CWE), the algorithm's name and version (ST),
and the note that an AI made it and nobody reviewed it (TX). Rows of one finding, image or segment share OBX-4.

Every message is a pure function of the stored report and the destination's keys: a resend is byte-identical
(same MSH-10). hl7apy validates the structure (STRICT) before a message leaves; hl7apy's STRICT parser holds each
OBX-5 component to 199 characters, so a longer sentence is wrapped at word boundaries into repetitions of OBX-5
(TX: one line per repetition).
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

from hl7apy.base_datatypes import TX
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from node.reports.model import Coded, Report, segment_sentence

VERSION = "2.5.1"
MAX_COMPONENT = 199  # hl7apy STRICT: ST components of OBX-5 ("varies")
STUDY_UID = "113014^DICOM Study^DCM"
FINDINGS_TEXT = "18782-3^Radiology Study observation^LN"
FINDING = "121071^Finding^DCM"
ALGORITHM_NAME = "111001^Algorithm Name^DCM"
ALGORITHM_VERSION = "111003^Algorithm Version^DCM"
NOTE = "AINOTE^AI result note^99AINODE"
NO_UNITS = "1^no units^UCUM"

#: DICOM SpecificCharacterSet -> (MSH-18, Python codec); anything else is sent as UTF-8
CHARSETS: dict[str, tuple[str, str]] = {
    "": ("ASCII", "ascii"), "ISO_IR 6": ("ASCII", "ascii"), "ISO_IR 100": ("8859/1", "latin_1"),
    "ISO_IR 101": ("8859/2", "iso8859_2"), "ISO_IR 109": ("8859/3", "iso8859_3"),
    "ISO_IR 110": ("8859/4", "iso8859_4"), "ISO_IR 144": ("8859/5", "iso8859_5"),
    "ISO_IR 127": ("8859/6", "iso8859_6"), "ISO_IR 126": ("8859/7", "iso8859_7"),
    "ISO_IR 138": ("8859/8", "iso8859_8"), "ISO_IR 148": ("8859/9", "iso8859_9"),
    "ISO_IR 192": ("UNICODE UTF-8", "utf-8"),
}
UTF8 = ("UNICODE UTF-8", "utf-8")
#: HL7 table 0396 names of the DICOM coding schemes the node writes
SCHEMES = {"SRT": "SCT", "LN": "LN", "DCM": "DCM", "SCT": "SCT", "RADLEX": "RADLEX", "UCUM": "UCUM"}


@dataclass(frozen=True)
class Oru:
    """One built message: its control ID (MSH-10), its bytes (without MLLP framing) and its MSH-18."""

    control_id: str
    data: bytes
    charset: str


def control_id(report_uid: str) -> str:
    """MSH-10: 20 characters (the v2.5.1 length) derived from the report version's UID."""
    digest = base64.b32encode(hashlib.sha256(report_uid.encode("ascii")).digest()).decode("ascii")
    return "AI" + digest[:18]


def esc(text: str) -> str:
    """Text with HL7's delimiters escaped (hl7apy's own escaping), line breaks as spaces."""
    return TX(" ".join(str(text).split())).to_er7()


def lines(text: str) -> list[str]:
    """``text`` escaped and wrapped between words into pieces hl7apy STRICT accepts (<= 199 characters escaped).

    Joining the unescaped pieces with one space gives the text back (a word longer than a piece is cut).
    """
    out: list[str] = []
    line = ""
    for word in " ".join(str(text).split()).split(" "):
        candidate = f"{line} {word}" if line else word
        if len(esc(candidate)) <= MAX_COMPONENT:
            line = candidate
            continue
        if line:
            out.append(esc(line))
        while len(esc(word)) > MAX_COMPONENT:  # one word longer than a line: cut it by characters
            cut = MAX_COMPONENT
            while len(esc(word[:cut])) > MAX_COMPONENT:
                cut -= 1
            out.append(esc(word[:cut]))
            word = word[cut:]
        line = word
    out.append(esc(line))
    return out


def cwe(code: Coded | None, text: str = "") -> str:
    """A code as CE/CWE components (code^text^system); text only when there is no code."""
    if code is None:
        return "^" + esc(text)[:MAX_COMPONENT]
    return f"{esc(code.value)}^{esc(code.meaning)[:MAX_COMPONENT]}^{esc(SCHEMES.get(code.scheme, code.scheme))}"


def hl7_time(t: float) -> str:
    """A POSIX time as TS (local time with its UTC offset)."""
    return time.strftime("%Y%m%d%H%M%S%z", time.localtime(t))


def study_time(date: str, clock: str) -> str:
    """DICOM StudyDate + StudyTime as TS (whole seconds), '' without a date."""
    if not date:
        return ""
    digits = "".join(ch for ch in clock.split(".")[0] if ch.isdigit())
    return date + digits[:6]


def person_name(pn: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix, first component group) as XPN (family^given^middle^suffix^prefix)."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (esc(p) for p in parts)
    value = "^".join([family, given, middle, suffix, prefix]).rstrip("^")
    return value or '""'


def charset_for(specific_character_set: str) -> tuple[str, str]:
    """(MSH-18, codec) for the study's SpecificCharacterSet (its first value; multi-byte and ISO 2022: UTF-8)."""
    values = [v.strip() for v in specific_character_set.split("\\")]
    if len([v for v in values if v]) > 1:
        return UTF8
    return CHARSETS.get(values[0] if values else "", UTF8)


class _Rows:
    """OBX rows in order, numbered (OBX-1)."""

    def __init__(self, group: Any, status: str) -> None:
        self.group = group
        self.status = status
        self.n = 0

    def add(self, value_type: str, identifier: str, value: str | list[str], sub_id: int | None = None,
            units: str | None = None) -> None:
        self.n += 1
        obx = self.group.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(self.n)
        obx.obx_2 = value_type
        obx.obx_3 = identifier
        if sub_id is not None:
            obx.obx_4 = str(sub_id)
        values = value if isinstance(value, list) else [value]
        obx.obx_5 = values[0]
        for more in values[1:]:
            obx.add_field("OBX_5").value = more
        if units:
            obx.obx_6 = units
        obx.obx_11 = self.status


def _hd(value: str | None) -> str | None:
    return esc(value) if value else None


def build_oru(report: Report, dest: Any) -> Oru:
    """The ORU^R01 of ``report`` for one ``type: hl7v2`` destination (its MSH-3..6, MSH-11 and retraction keys)."""
    content, study, patient = report.content, report.content.study, report.content.patient
    if report.status == "retracted":
        obr25, obx11 = dest.retraction.obr25, dest.retraction.obx11
    elif report.status == "corrected":
        obr25, obx11 = "C", "C"
    else:
        obr25, obx11 = "P", "P"
    msh18, codec = charset_for(study.character_set)
    cid = control_id(report.uid)
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    for field, value in (("msh_3", dest.sending_application), ("msh_4", dest.sending_facility),
                         ("msh_5", dest.receiving_application), ("msh_6", dest.receiving_facility)):
        if _hd(value):
            setattr(msh, field, _hd(value))
    msh.msh_7 = hl7_time(report.created_at)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = cid
    msh.msh_11 = dest.processing_id
    msh.msh_12 = VERSION
    msh.msh_18 = msh18
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    authority = "&".join([esc(patient.issuer), esc(patient.issuer_oid), "ISO" if patient.issuer_oid else ""]).rstrip("&")
    pid.pid_3 = f"{esc(patient.id) or chr(34) * 2}^^^{authority}^MR" if authority else (esc(patient.id) or '""')
    pid.pid_5 = person_name(patient.name)
    if patient.birth_date:
        pid.pid_7 = esc(patient.birth_date)
    pid.pid_8 = patient.sex if patient.sex in ("M", "F", "O") else "U"
    result.oru_r01_patient.add_group("ORU_R01_VISIT").pv1.pv1_2 = "U"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    orc, obr = order.orc, order.obr
    orc.orc_1 = "SC"
    obr.obr_1 = "1"
    for seg, prefix in ((orc, "orc"), (obr, "obr")):
        if study.placer_order:
            setattr(seg, f"{prefix}_2", esc(study.placer_order))
        if study.filler_order:
            setattr(seg, f"{prefix}_3", esc(study.filler_order))
    orc.orc_5 = "CA" if obr25 == "X" else "CM"
    orc.orc_9 = hl7_time(report.created_at)
    obr.obr_4 = cwe(study.procedure, study.description or f"{'/'.join(study.modalities) or 'Imaging'} study")
    if study_time(study.date, study.time):
        obr.obr_7 = study_time(study.date, study.time)
    if study.accession:
        obr.obr_18 = esc(study.accession)
    if study.requested_procedure_id:
        obr.obr_19 = esc(study.requested_procedure_id)
    obr.obr_22 = hl7_time(report.created_at)
    obr.obr_24 = "RAD"
    obr.obr_25 = obr25
    rows = _Rows(order, obx11)
    rows.add("HD", STUDY_UID, esc(study.uid))
    for f in content.findings:
        rows.add("TX", FINDINGS_TEXT, lines(f.text), f.number)
        if f.code is not None:
            rows.add("CWE", FINDING, cwe(f.code), f.number)
    for image in content.labels:
        rows.add("TX", FINDINGS_TEXT, lines(image.text), image.number)
        for label_set, winner in image.winners:
            rows.add("CWE", cwe(label_set), cwe(winner), image.number)
        for score in image.scores:
            rows.add("NM", cwe(score.label), f"{score.probability:.6g}", image.number, NO_UNITS)
    for seg in content.segments:
        rows.add("TX", FINDINGS_TEXT, lines(segment_sentence(seg)), seg.number)
        if seg.type is not None:
            rows.add("CWE", cwe(seg.category) if seg.category else FINDING, cwe(seg.type), seg.number)
    algorithm = content.algorithm
    rows.add("ST", ALGORITHM_NAME, esc(algorithm.name)[:MAX_COMPONENT])
    rows.add("ST", ALGORITHM_VERSION, esc(algorithm.version)[:MAX_COMPONENT])
    rows.add("TX", NOTE, lines(note_text(report)))
    msg.validate()
    text = msg.to_er7()
    try:
        data = text.encode(codec)
    except UnicodeEncodeError:  # text the study's character set cannot hold: the whole message in UTF-8
        msh.msh_18, msh18 = UTF8[0], UTF8[0]
        data = msg.to_er7().encode("utf-8")
    return Oru(control_id=cid, data=data, charset=msh18)


def note_text(report: Report) -> str:
    """The note row: AI-made and not reviewed; emulator output; a correction or withdrawal and its reason."""
    parts = [report.note]
    if report.content.algorithm.emulated:
        parts.append("EMULATED: made by the local endpoint emulator, not a real model.")
    if report.status == "corrected":
        parts.append("Corrected: replaces the earlier AI result of this study (re-run).")
    if report.status == "retracted":
        parts.append(f"Withdrawn by the operator ({report.reason or 'no reason given'}): disregard this AI result.")
    return " ".join(parts)
