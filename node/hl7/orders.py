"""The fields of an order message (ORM^O01, OMI^O23) the node keeps, read positionally (python-hl7), v2.3 to v2.8.

Per ORC/OBR group: ORC-1 order control, ORC-2 placer and ORC-3 filler order number (else OBR-2/OBR-3), ORC-5 order
status, OBR-4 procedure, OBR-13 relevant clinical information, OBR-31 reason for study, and the accession number:
IPC-1 (OMI) else OBR-18 (IHE SWF's ORM "placer field 1"); the study UID from IPC-3 or ZDS-1. The patient from
PID-3 (first identifier, its assigning authority). CXRReportGen's indication is the reason for study, then the
clinical information (:func:`indication_of`).
"""

from __future__ import annotations

from typing import Any

import hl7

from node.hl7 import fields

CANCELLED = ("CA", "DC", "OC", "OD", "CR")  # cancel / discontinue requests and their confirmations


def _get(msg: hl7.Message, seg: Any, field: int, component: int = 1, repetition: int = 0) -> str:
    return msg.unescape(fields.component(seg, field, component, repetition)).strip()


def _all_texts(msg: hl7.Message, seg: Any, field: int) -> list[str]:
    """The text of every repetition of a CE/CWE field (its text component, else its code)."""
    if seg is None or len(seg) <= field or not str(seg[field]):
        return []
    out = []
    for rep in str(seg[field]).split("~"):
        parts = rep.split("^")
        text = parts[1] if len(parts) > 1 and parts[1] else parts[0]
        if text:
            out.append(msg.unescape(text).strip())
    return out


def patient_of(msg: hl7.Message) -> tuple[str, str]:
    """(PID-3 first identifier, its assigning authority namespace)."""
    try:
        pid = msg.segment("PID")
    except KeyError:
        return "", ""
    return _get(msg, pid, 3, 1), _get(msg, pid, 3, 4).split("&")[0]


def orders_of(msg: hl7.Message) -> list[dict[str, Any]]:
    """One dict per ORC (with the OBR/IPC/ZDS after it): the ``hl7_orders`` fields; accession may be ''."""
    patient_id, issuer = patient_of(msg)
    groups: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for seg in msg:
        name = str(seg[0])
        if name == "ORC":
            current = {"orc": seg, "obr": None, "ipc": None, "zds": None}
            groups.append(current)
        elif name in ("OBR", "IPC", "ZDS") and current is not None:
            current[name.lower()] = current[name.lower()] or seg
        elif name == "OBR" and current is None:  # OBR without ORC (some v2.3 senders)
            current = {"orc": None, "obr": seg, "ipc": None, "zds": None}
            groups.append(current)
    out = []
    for g in groups:
        orc, obr, ipc, zds = g["orc"], g["obr"], g["ipc"], g["zds"]
        out.append({
            "accession": _get(msg, ipc, 1) or _get(msg, obr, 18),
            "patient_id": patient_id, "patient_issuer": issuer,
            "order_control": (_get(msg, orc, 1) or "NW")[:2],
            "placer_number": _get(msg, orc, 2) or _get(msg, obr, 2),
            "filler_number": _get(msg, orc, 3) or _get(msg, obr, 3),
            "order_status": _get(msg, orc, 5)[:2],
            "procedure": _get(msg, obr, 4, 2) or _get(msg, obr, 4, 1),
            "clinical_info": _get(msg, obr, 13),
            "reason": "; ".join(_all_texts(msg, obr, 31)),
            "study_uid": _get(msg, ipc, 3) or _get(msg, zds, 1),
            "has_obr": obr is not None,
        })
    return out


def accession_of_report(msg: hl7.Message) -> str:
    """The accession number an ORU^R01 reports on (OBR-18), '' when absent."""
    try:
        return _get(msg, msg.segment("OBR"), 18)
    except KeyError:
        return ""


def indication_of(order: dict[str, Any] | None) -> str | None:
    """CXRReportGen's indication from a stored order: reason for study, then clinical information; None when the
    order is missing, cancelled or says neither."""
    if order is None or order.get("order_control") in CANCELLED:
        return None
    parts = [str(order.get(k) or "").strip() for k in ("reason", "clinical_info")]
    text = ". ".join(p.rstrip(". ") for p in parts if p)
    return text + "." if text else None
