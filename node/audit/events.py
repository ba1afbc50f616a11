"""Each event of the JSON-lines trail as DICOM audit messages (PS3.15 A.5.3), one function per kind of event.

=====================  ==================================================================================
JSON event             DICOM audit message
=====================  ==================================================================================
node-start, node-stop  110100 Application Activity (110120 Application Start / 110121 Application Stop)
association-end        110104 DICOM Instances Transferred, one per study the association stored (the peer
                       110153 source, the node 110152 destination), and one more with outcome 4 for the
                       instances it quarantined (:mod:`node.audit.transfers`)
association-rejected   110113 Security Alert (110126 Node Authentication), the peer as performing process
tls-failure            110113 Security Alert (110126 Node Authentication)
token-refused          110113 Security Alert (110132 Use of Restricted Function)
config-changed         110113 Security Alert (110131 Software Configuration, 110129 Security Configuration
                       when a security setting changed)
model-request          110106 Export: the node 110153 source, the model endpoint 110152 destination (a URI)
job-failed, job-parked 110106 Export with outcome 8
result-sent            110104 DICOM Instances Transferred: the node source, the destination 110152
result-parked          110104 with outcome 8
prior-query            110112 Query: the node source, the PACS or DICOMweb service destination, the query
prior-retrieved        110104 DICOM Instances Transferred: a prior study's instances retrieved by C-GET or
                       WADO-RS (the PACS source, the node destination; a C-MOVE's come in through the SCP)
study-deleted          110105 DICOM Study Deleted
action                 110103 DICOM Instances Accessed with the person who acted (retract D, rerun C, retry U)
user-login[-failed]    110114 User Authentication (110122 Login)
user-logout            110114 User Authentication (110123 Logout)
=====================  ==================================================================================

association-start, instance-received, instance-quarantined feed the association's 110104 messages; the other
events (results-rejected, study-rerun) are the details of an ``action`` and make no message of their own.
Identifiers the trail does not hold (the patient) come from :class:`node.audit.patients.PatientDirectory`.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from typing import Any, Callable

from node.audit import xmlbuild as x
from node.audit.patients import Patient
from node.audit.xmlbuild import AuditMessage

ACTION_CODES = {"retract": "D", "rerun": "C", "retry": "U"}


@dataclass
class Context:
    """What every message says about the node, and where the patient of a study is found."""

    source_id: str  # AuditSourceID, and the node's UserID
    ae_title: str
    site_id: str | None = None
    endpoint_urls: dict[str, str] = field(default_factory=dict)
    patient_of: Callable[[str | None], Patient | None] = lambda uid: None
    max_bytes: int = 32768
    #: the patient of an HL7 message the listener kept: (MSH-3 sending application, MSH-10) -> Patient
    patient_of_message: Callable[[str | None, str | None], Patient | None] = lambda app, control: None


def new(ctx: Context, ev: dict[str, Any], event_id: x.Code, action: str, *, types: list[x.Code] | None = None,
        description: str | None = None) -> AuditMessage:
    msg = AuditMessage(event_id, action, str(ev["time"]), int(ev.get("outcome", 0)), types or [],
                       description if description else None)
    return msg.source(ctx.source_id, ctx.site_id)


def node(msg: AuditMessage, ctx: Context, ev: dict[str, Any], roles: list[x.Code], requestor: bool) -> None:
    """The node as a participant: its name, AE title, the process that recorded the event, its host."""
    msg.participant(ctx.source_id, requestor, roles, alt=f"AETITLES={ctx.ae_title}",
                    name=f"dicom-node pid {ev.get('pid', '?')}", access_point=ev.get("node_host"))


def patient(msg: AuditMessage, ctx: Context, study_uid: str | None) -> Patient | None:
    found = ctx.patient_of(study_uid)
    if found is not None:
        pid = f"{found.patient_id}^^^{found.issuer}" if found.issuer else found.patient_id
        msg.obj(pid, x.PATIENT_NUMBER, type_code="1", role="1", name=found.name or None)
    return found


def study(msg: AuditMessage, study_uid: str, sop_classes: list[x.SopClass] | None = None,
          life_cycle: str | None = None) -> None:
    msg.obj(study_uid, x.STUDY_UID, type_code="2", role="3", sop_classes=sop_classes or [], life_cycle=life_cycle)


def peer(msg: AuditMessage, ae: str | None, host: str | None, roles: list[x.Code], requestor: bool) -> None:
    """A DICOM peer (a calling AE title, a destination) at its address."""
    ae = (ae or "").strip()
    msg.participant(ae or host or "unknown", requestor, roles, alt=f"AETITLES={ae}" if ae else None,
                    access_point=host)


# --- the events -------------------------------------------------------------------------------------------

def application(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    start = ev["event"] == "node-start"
    msg = new(ctx, ev, x.APPLICATION_ACTIVITY, "E", types=[x.APPLICATION_START if start else x.APPLICATION_STOP])
    node(msg, ctx, ev, [x.APPLICATION], False)
    msg.participant(ev.get("user") or getpass.getuser(), True, [x.APPLICATION_LAUNCHER],
                    access_point=ev.get("node_host"))
    return [msg]


def security_alert(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    kind = ev["event"]
    reason = ev.get("reason") or kind
    types = {"association-rejected": [x.NODE_AUTHENTICATION], "tls-failure": [x.NODE_AUTHENTICATION],
             "token-refused": [x.USE_OF_RESTRICTED_FUNCTION]}.get(kind, [x.SOFTWARE_CONFIGURATION])
    if kind == "config-changed" and ev.get("security"):
        types = [*types, x.SECURITY_CONFIGURATION]
    msg = new(ctx, ev, x.SECURITY_ALERT, "E", types=types, description=reason)
    node(msg, ctx, ev, [x.APPLICATION], False)  # the reporting process
    details: list[tuple[str, str | bytes]] = [("Alert Description", reason)]
    if kind == "config-changed":
        msg.participant(ev.get("user") or "unknown", True, access_point=ev.get("node_host"))
        details += [("SHA-256", ev.get("sha256") or ""), ("Changed", ", ".join(ev.get("sections") or []))]
        msg.obj(f"file://{ev.get('path', '')}", x.URI, type_code="2", role="13", details=details)
        return [msg]
    host = ev.get("peer_host")
    if kind == "token-refused":
        msg.participant(ev.get("user") or host or "unknown", True, access_point=host)
        details.append(("Path", ev.get("path") or ""))
    else:
        peer(msg, ev.get("calling_ae"), host, [], True)
    if host:
        msg.obj(host, x.NODE_ID, type_code="2", details=details)
    return [msg]


def export(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    why = ev.get("reason") or (f"result: {ev['result']}" if ev.get("result") else None)
    msg = new(ctx, ev, x.EXPORT, "R", description=why)
    node(msg, ctx, ev, [x.SOURCE, x.APPLICATION], True)
    name = ev.get("endpoint") or "endpoint"
    url = ctx.endpoint_urls.get(name) or f"endpoint:{name}"
    msg.participant(url, False, [x.DESTINATION, x.DESTINATION_MEDIA], alt=name, access_point=ev.get("endpoint_host"),
                    media=x.MEDIA_URI)
    series = ev.get("series_uids") or []
    msg.obj(ev["study_uid"], x.STUDY_UID, type_code="2", role="3", life_cycle="10",
            details=[("SeriesInstanceUID", s) for s in series] + [("Rule", ev.get("rule") or "")])
    patient(msg, ctx, ev.get("study_uid"))
    return [msg]


def result_transfer(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    msg = new(ctx, ev, x.INSTANCES_TRANSFERRED, "R", description=ev.get("reason") or ev.get("status"))
    node(msg, ctx, ev, [x.SOURCE, x.APPLICATION], True)
    if ev.get("destination_url"):
        msg.participant(ev["destination_url"], False, [x.DESTINATION], alt=ev.get("destination"),
                        access_point=_host_of(ev["destination_url"]))
    else:
        peer(msg, ev.get("destination_ae"), ev.get("destination_host"), [x.DESTINATION], False)
    study(msg, ev["study_uid"], [x.SopClass(ev.get("sop_class_uid") or "", 1, [ev["sop_instance_uid"]])])
    patient(msg, ctx, ev.get("study_uid"))
    return [msg]


def prior_retrieve(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """Instances of a prior study the node retrieved (C-GET, WADO-RS): the PACS the source, the node the destination."""
    msg = new(ctx, ev, x.INSTANCES_TRANSFERRED, "C")
    if ev.get("protocol") == "WADO-RS":
        msg.participant(ev.get("url") or ev.get("destination") or "unknown", False, [x.SOURCE],
                        alt=ev.get("destination"), access_point=ev.get("peer_host"))
    else:
        peer(msg, ev.get("called_ae"), ev.get("peer_host"), [x.SOURCE], False)
    node(msg, ctx, ev, [x.DESTINATION, x.APPLICATION], True)
    by_class: dict[str, list[str]] = {}
    for sop, sop_class in ev.get("instances") or []:
        by_class.setdefault(sop_class, []).append(sop)
    study(msg, ev["study_uid"], [x.SopClass(c, len(u), u) for c, u in sorted(by_class.items())])
    patient(msg, ctx, ev["study_uid"])
    return [msg]


def query(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    from node.audit.queries import query_bytes

    msg = new(ctx, ev, x.QUERY, "E", description=ev.get("reason"))
    node(msg, ctx, ev, [x.SOURCE, x.APPLICATION], True)
    if ev.get("protocol") == "QIDO-RS":
        msg.participant(ev.get("url") or ev.get("destination") or "unknown", False, [x.DESTINATION],
                        alt=ev.get("destination"), access_point=ev.get("peer_host"))
    else:
        peer(msg, ev.get("called_ae"), ev.get("peer_host"), [x.DESTINATION], False)
    found = ctx.patient_of(ev.get("for_study_uid"))
    body, details = query_bytes(ev, found)
    msg.obj(ev.get("sop_class_uid") or "1.2.840.10008.5.1.4.1.2.2.1", x.SOP_CLASS_UID, type_code="2", role="3",
            query=body, details=details)
    patient(msg, ctx, ev.get("for_study_uid"))
    return [msg]


def study_deleted(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    msg = new(ctx, ev, x.STUDY_DELETED, "D", description=ev.get("reason"))
    node(msg, ctx, ev, [x.APPLICATION], True)
    classes = [x.SopClass(uid, int(n)) for uid, n in sorted((ev.get("sop_classes") or {}).items())]
    study(msg, ev["study_uid"], classes, life_cycle="15")
    patient(msg, ctx, ev.get("study_uid"))
    return [msg]


def action(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    what = str(ev.get("action") or "")
    detail = ", ".join(f"{k} {ev[k]}" for k in ("rule", "reason", "destination", "jobs") if ev.get(k))
    error = f" ({ev['error']})" if ev.get("error") else ""
    msg = new(ctx, ev, x.INSTANCES_ACCESSED, ACTION_CODES.get(what, "U"),
              description=f"{what}{': ' + detail if detail else ''}{error}")
    msg.participant(ev.get("user") or "unknown", True, name=ev.get("user_name"), access_point=ev.get("peer_host"))
    node(msg, ctx, ev, [x.APPLICATION], False)
    if ev.get("study_uid"):
        study(msg, ev["study_uid"])
        patient(msg, ctx, ev["study_uid"])
    else:  # a destination's parked results, every study at once
        msg.obj(f"destination:{ev.get('destination') or 'all'}", x.URI, type_code="2", role="16")
    return [msg]


def user_authentication(ctx: Context, ev: dict[str, Any]) -> list[AuditMessage]:
    login = ev["event"] != "user-logout"
    msg = new(ctx, ev, x.USER_AUTHENTICATION, "E", types=[x.LOGIN if login else x.LOGOUT], description=ev.get("reason"))
    roles = ev.get("roles")
    msg.participant(ev.get("user") or "unknown", True, name=ev.get("user_name"), access_point=ev.get("peer_host"),
                    alt=f"roles={','.join(roles)}" if roles else None)
    node(msg, ctx, ev, [x.APPLICATION], False)
    return [msg]


def _host_of(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


#: the function making the messages of each event that makes its own; the others feed transfers or none
CONVERTERS: dict[str, Callable[[Context, dict[str, Any]], list[AuditMessage]]] = {
    "node-start": application, "node-stop": application,
    "association-rejected": security_alert, "tls-failure": security_alert, "token-refused": security_alert,
    "config-changed": security_alert,
    "model-request": export, "job-failed": export, "job-parked": export,
    "result-sent": result_transfer, "result-parked": result_transfer,
    "prior-query": query, "prior-retrieved": prior_retrieve, "study-deleted": study_deleted, "action": action,
    "user-login": user_authentication, "user-login-failed": user_authentication, "user-logout": user_authentication,
}
