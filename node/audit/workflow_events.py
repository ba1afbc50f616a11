"""The hospital-workflow events of the trail as DICOM audit messages (PS3.15 A.5.3): reports leaving for a RIS or
an EHR, HL7 messages in, MPPS and IAN, AIW-I workitems, and the C-FINDs that check a destination before a resend.

=====================================  ======================================================================
JSON event                             DICOM audit message
=====================================  ======================================================================
report-sent, report-parked             110106 Export (R; outcome 0 / 8): an ORU^R01 over MLLP or a FHIR
                                       transaction left (A.5.3.4): the node 110153 Source, the RIS or EHR
                                       110152 Destination + 110154 Destination Media (MediaType 110037 URI:
                                       ``mllp://host:port`` or the FHIR base URL), the study (report UID,
                                       protocol and MSH-10 as details), the patient
verify-query                           110112 Query (E; A.5.3.10): the IMAGE-level C-FIND of ``verify_by:
                                       c-find`` as sent, the node source, the PACS destination, the patient
hl7-received                           110111 Procedure Record (PS3.15 A.5.3 Procedure Record, as IHE RAD
                                       audits its order and procedure transactions): an order (ORM^O01, OMI^O23) or a
                                       report (ORU^R01) taken (C; an order's ORC-1 CA/DC/OC: D, XO/SC: U),
                                       or refused (outcome 4 for AE, 8 for AR or a frame over the limit); the
                                       sending application at its address 110153 Source, the node 110152
                                       Destination, the patient (PID-3/PID-5 of the stored message) with
                                       MSH-10 as a detail
mpps-received, ian-received            110111 Procedure Record: an MPPS N-CREATE (C) or N-SET (U), an IAN
                                       (U); refused ones with outcome 4 and the DIMSE status; the calling AE
                                       110153 Source, the node 110152, each study with the MPPS UID, the
                                       patient
workitem-claimed, -completed,          110111 Procedure Record (U): the node (requestor) changed an AIW-I
-canceled                              workitem's state at the worklist (110152 Destination, its URL); the
                                       workitem (URI, role Job), its study, the patient
workitem-query                         110112 Query (E): a worklist search that returned workitems
inputs-retrieved                       110104 DICOM Instances Transferred (C): a workitem's inputs retrieved
                                       by C-GET or WADO-RS (as ``prior-retrieved``)
=====================================  ======================================================================

``tls-failure`` lines of the MLLP listener (``protocol: MLLP``) are Security Alerts like the DICOM ones
(:func:`node.audit.events.security_alert`).
"""

from __future__ import annotations

from typing import Any, Callable

from node.audit import events
from node.audit import xmlbuild as x
from node.audit.xmlbuild import AuditMessage

PROCEDURE_RECORD: x.Code = ("110111", "DCM", "Procedure Record")
ROLE_JOB = "20"  # RFC 3881 participant object type code role: Job
REPORT_KINDS = {"hl7v2": "HL7 v2.5.1 ORU^R01 over MLLP", "fhir": "FHIR R4 transaction Bundle"}
ORDER_DELETES, ORDER_UPDATES = ("CA", "DC", "OC", "OD"), ("XO", "SC", "XX")


def destination_uri(ev: dict[str, Any]) -> str:
    """Where a report went, as a URI: the FHIR base URL, or ``mllp://host:port`` for a RIS."""
    if ev.get("destination_type") == "fhir" and ev.get("destination_url"):
        return str(ev["destination_url"])
    return f"mllp://{ev.get('destination_host') or '?'}:{ev.get('destination_port') or '?'}"


def report_export(ctx: events.Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """A report (ORU or FHIR Bundle) sent to, or parked for, a RIS or an EHR: 110106 Export."""
    kind = str(ev.get("destination_type") or "")
    msg = events.new(ctx, ev, x.EXPORT, "R", description=ev.get("reason") or ev.get("status"))
    events.node(msg, ctx, ev, [x.SOURCE, x.APPLICATION], True)
    uri = destination_uri(ev)
    host = ev.get("destination_host") or _host_of(uri)
    msg.participant(uri, False, [x.DESTINATION, x.DESTINATION_MEDIA], alt=ev.get("destination"),
                    access_point=host, media=x.MEDIA_URI)
    details: list[tuple[str, str | bytes]] = [("Report", str(ev.get("sop_instance_uid") or "")),
                                              ("Protocol", REPORT_KINDS.get(kind, kind))]
    if kind == "hl7v2" and ev.get("sop_instance_uid"):
        from node.hl7.oru import control_id

        details.append(("MSH-10", control_id(str(ev["sop_instance_uid"]))))
    msg.obj(ev["study_uid"], x.STUDY_UID, type_code="2", role="3", life_cycle="10", details=details)
    events.patient(msg, ctx, ev.get("study_uid"))
    return [msg]


def hl7_received(ctx: events.Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """An HL7 v2 message taken (or refused) by the MLLP listener: 110111 Procedure Record."""
    control = str(ev.get("order_control") or "").upper()
    action = "D" if control in ORDER_DELETES else "U" if control in ORDER_UPDATES or \
        ev.get("message_type") == "ORU^R01" else "C"
    what = f"{ev.get('message_type') or 'HL7 message'} {ev.get('control_id') or ''}".strip()
    why = f"{what}: {ev.get('code') or '?'}" + (f" ({ev['reason']})" if ev.get("reason") else "")
    msg = events.new(ctx, ev, PROCEDURE_RECORD, action, description=why)
    sender = "|".join(p for p in (ev.get("sending_application"), ev.get("sending_facility")) if p) or \
        ev.get("peer_host") or "unknown"
    msg.participant(sender, True, [x.SOURCE], alt=f"peer {ev.get('peer_host')}:{ev.get('peer_port')}"
                    if ev.get("peer_host") else None, access_point=ev.get("peer_host"))
    events.node(msg, ctx, ev, [x.DESTINATION, x.APPLICATION], False)
    found = ctx.patient_of_message(ev.get("sending_application"), ev.get("control_id")) \
        if ev.get("code") == "AA" else None
    if found is not None:
        pid = f"{found.patient_id}^^^{found.issuer}" if found.issuer else found.patient_id
        details: list[tuple[str, str | bytes]] = [("MSH-10", str(ev.get("control_id") or ""))]
        msg.obj(pid, x.PATIENT_NUMBER, type_code="1", role="1", name=found.name or None, details=details)
    elif ev.get("control_id"):  # refused, or kept without a patient found: the message itself is the object
        msg.obj(f"MSH-10:{ev['control_id']}", x.URI, type_code="2", role=ROLE_JOB, name=what)
    return [msg]


def notice(ctx: events.Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """An MPPS N-CREATE / N-SET or an IAN the SCP answered: 110111 Procedure Record."""
    mpps = ev["event"] == "mpps-received"
    action = "C" if mpps and ev.get("operation") == "n-create" else "U"
    kind = "MPPS" if mpps else "IAN"
    status = f"{kind} {ev.get('operation', '').upper()} {ev.get('state') or ''}".strip()
    why = f"{status}: {ev['reason']}" if ev.get("reason") else status
    msg = events.new(ctx, ev, PROCEDURE_RECORD, action, description=why)
    events.peer(msg, ev.get("calling_ae"), ev.get("peer_host"), [x.SOURCE], True)
    events.node(msg, ctx, ev, [x.DESTINATION, x.APPLICATION], False)
    uid = str(ev.get("sop_instance_uid") or "")
    studies = [s for s in ev.get("study_uids") or [] if s]
    for study_uid in studies:
        msg.obj(study_uid, x.STUDY_UID, type_code="2", role="3", details=[(f"{kind} UID", uid)])
    if not studies:
        msg.obj(uid or "unknown", x.URI, type_code="2", role=ROLE_JOB, name=f"{kind} {uid}")
    if studies:
        events.patient(msg, ctx, studies[0])
    return [msg]


def workitem(ctx: events.Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """An AIW-I workitem the node claimed, completed or canceled at the worklist: 110111 Procedure Record (U)."""
    step = ev["event"].split("-", 1)[1]
    why = f"workitem {step}" + (f": {ev['reason']}" if ev.get("reason") else "")
    if ev.get("outputs"):
        why += f" ({len(ev['outputs'])} output(s))"
    msg = events.new(ctx, ev, PROCEDURE_RECORD, "U", description=why)
    events.node(msg, ctx, ev, [x.SOURCE, x.APPLICATION], True)
    worklist = str(ev.get("url") or ev.get("worklist") or "worklist")
    msg.participant(worklist, False, [x.DESTINATION], alt=ev.get("worklist"), access_point=_host_of(worklist))
    uid = str(ev.get("workitem_uid") or "")
    msg.obj(f"{worklist.rstrip('/')}/workitems/{uid}", x.URI, type_code="2", role=ROLE_JOB,
            name=f"workitem {uid}", details=[("Rule", ev.get("rule") or "")] if ev.get("rule") else ())
    if ev.get("study_uid"):
        events.study(msg, ev["study_uid"])
        events.patient(msg, ctx, ev["study_uid"])
    return [msg]


def workitem_query(ctx: events.Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """A worklist search (UPS-RS ``GET /workitems``) that returned workitems: 110112 Query (E)."""
    msg = events.new(ctx, ev, x.QUERY, "E", description=f"{ev.get('matches', 0)} workitem(s)")
    events.node(msg, ctx, ev, [x.SOURCE, x.APPLICATION], True)
    worklist = str(ev.get("url") or "worklist")
    msg.participant(worklist, False, [x.DESTINATION], alt=ev.get("worklist"), access_point=_host_of(worklist))
    msg.obj("1.2.840.10008.5.1.4.34.6.3", x.SOP_CLASS_UID, type_code="2", role="3",  # UPS Pull SOP Class
            query=str(ev.get("query") or "").encode("utf-8"), details=[("QueryEncoding", "UTF-8")])
    return [msg]


def _host_of(url: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


#: the function making the messages of each event of this module (:data:`node.audit.convert.CONVERTERS` adds them)
CONVERTERS: dict[str, Callable[[events.Context, dict[str, Any]], list[AuditMessage]]] = {
    "report-sent": report_export, "report-parked": report_export,
    "verify-query": events.query,
    "hl7-received": hl7_received,
    "mpps-received": notice, "ian-received": notice,
    "workitem-claimed": workitem, "workitem-completed": workitem, "workitem-canceled": workitem,
    "workitem-query": workitem_query,
    "inputs-retrieved": events.prior_retrieve,
}
