"""Building one DICOM audit message (PS3.15 A.5.1): the elements in the schema's order, coded values, bytes.

:class:`AuditMessage` collects the parts of a message in any order and writes them in the order the schema
requires (EventIdentification, ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*).
Codes are (code, code system name, meaning): "DCM" codes from PS3.16, the 1-12 object ID type codes of RFC 3881.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Iterable
from xml.etree import ElementTree as ET

Code = tuple[str, str, str]  # (csd-code, codeSystemName, originalText)

# Event IDs (CID 400) and event type codes (CID 401)
APPLICATION_ACTIVITY: Code = ("110100", "DCM", "Application Activity")
INSTANCES_ACCESSED: Code = ("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED: Code = ("110105", "DCM", "DICOM Study Deleted")
EXPORT: Code = ("110106", "DCM", "Export")
QUERY: Code = ("110112", "DCM", "Query")
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
USER_AUTHENTICATION: Code = ("110114", "DCM", "User Authentication")
APPLICATION_START: Code = ("110120", "DCM", "Application Start")
APPLICATION_STOP: Code = ("110121", "DCM", "Application Stop")
LOGIN: Code = ("110122", "DCM", "Login")
LOGOUT: Code = ("110123", "DCM", "Logout")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
SECURITY_CONFIGURATION: Code = ("110129", "DCM", "Security Configuration")
SOFTWARE_CONFIGURATION: Code = ("110131", "DCM", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION: Code = ("110132", "DCM", "Use of Restricted Function")
# Active participant roles (CID 402)
APPLICATION: Code = ("110150", "DCM", "Application")
APPLICATION_LAUNCHER: Code = ("110151", "DCM", "Application Launcher")
DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
SOURCE: Code = ("110153", "DCM", "Source Role ID")
DESTINATION_MEDIA: Code = ("110154", "DCM", "Destination Media")
MEDIA_URI: Code = ("110037", "DCM", "URI")
# Participant object ID types (CID 404 and RFC 3881)
STUDY_UID: Code = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Code = ("110181", "DCM", "SOP Class UID")
NODE_ID: Code = ("110182", "DCM", "Node ID")
PATIENT_NUMBER: Code = ("2", "RFC-3881", "Patient Number")
URI: Code = ("12", "RFC-3881", "URI")
# Audit source type: application server process (PS3.15 A.5.1.2.1)
APPLICATION_SERVER: Code = ("4", "DCM", "Application Server process tier in a multi-tier system")

OUTCOMES = {"success": 0, "minor-failure": 4, "serious-failure": 8, "major-failure": 12}


def _coded(tag: str, code: Code) -> ET.Element:
    return ET.Element(tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]})


def b64(value: str | bytes) -> str:
    """A ValuePair's value or a query: base64 of the bytes (text as UTF-8)."""
    return base64.b64encode(value.encode("utf-8") if isinstance(value, str) else value).decode("ascii")


def token(value: object) -> str:
    """An xsd:token: no line breaks, tabs or runs of spaces, no leading or trailing space."""
    return " ".join(str(value).split())


@dataclass
class SopClass:
    """One SOP class of a study in a ParticipantObjectDescription; ``instances`` may be left empty."""

    uid: str
    count: int
    instances: list[str] = field(default_factory=list)


@dataclass
class AuditMessage:
    """One message; ``outcome`` is 0, 4, 8 or 12 (EventOutcomeIndicator)."""

    event_id: Code
    action: str  # EventActionCode: C R U D E
    when: str  # EventDateTime, xsd:dateTime with its time zone
    outcome: int = 0
    type_codes: list[Code] = field(default_factory=list)
    outcome_description: str | None = None
    _participants: list[ET.Element] = field(default_factory=list)
    _objects: list[ET.Element] = field(default_factory=list)
    _source: ET.Element | None = None

    def participant(self, user_id: str, requestor: bool, roles: Iterable[Code] = (), *, alt: str | None = None,
                    name: str | None = None, access_point: str | None = None,
                    media: Code | None = None) -> "AuditMessage":
        """An ActiveParticipant: a person, a process or a node (``access_point``: host name or IP address)."""
        el = ET.Element("ActiveParticipant", {"UserID": str(user_id),
                                              "UserIsRequestor": "true" if requestor else "false"})
        if alt:
            el.set("AlternativeUserID", alt)
        if name:
            el.set("UserName", name)
        if access_point:
            el.set("NetworkAccessPointID", token(access_point))
            el.set("NetworkAccessPointTypeCode", "2" if _is_ip(access_point) else "1")
        for role in roles:
            el.append(_coded("RoleIDCode", role))
        if media is not None:
            ET.SubElement(el, "MediaIdentifier").append(_coded("MediaType", media))
        self._participants.append(el)
        return self

    def source(self, source_id: str, site_id: str | None = None) -> "AuditMessage":
        """The AuditSourceIdentification: the node that reports the event."""
        el = ET.Element("AuditSourceIdentification", {"AuditSourceID": token(source_id)})
        if site_id:
            el.set("AuditEnterpriseSiteID", token(site_id))
        el.append(_coded("AuditSourceTypeCode", APPLICATION_SERVER))
        self._source = el
        return self

    def obj(self, object_id: str, id_type: Code, *, type_code: str, role: str | None = None,
            name: str | None = None, query: bytes | None = None, details: Iterable[tuple[str, str | bytes]] = (),
            sop_classes: Iterable[SopClass] = (), life_cycle: str | None = None) -> "AuditMessage":
        """A ParticipantObjectIdentification. The schema wants a name or a query: without either, the ID names it."""
        el = ET.Element("ParticipantObjectIdentification", {"ParticipantObjectID": token(object_id),
                                                            "ParticipantObjectTypeCode": type_code})
        if role:
            el.set("ParticipantObjectTypeCodeRole", role)
        if life_cycle:
            el.set("ParticipantObjectDataLifeCycle", life_cycle)
        el.append(_coded("ParticipantObjectIDTypeCode", id_type))
        if query is not None:
            ET.SubElement(el, "ParticipantObjectQuery").text = b64(query)
        else:
            ET.SubElement(el, "ParticipantObjectName").text = token(name or object_id)
        for kind, value in details:
            ET.SubElement(el, "ParticipantObjectDetail", {"type": token(kind), "value": b64(value)})
        classes = list(sop_classes)
        if classes:
            desc = ET.SubElement(el, "ParticipantObjectDescription")
            for sop in classes:
                sc = ET.SubElement(desc, "SOPClass", {"UID": sop.uid, "NumberOfInstances": str(sop.count)})
                for uid in sop.instances:
                    ET.SubElement(sc, "Instance", {"UID": uid})
        self._objects.append(el)
        return self

    def element(self) -> ET.Element:
        root = ET.Element("AuditMessage")
        ev = ET.SubElement(root, "EventIdentification", {"EventActionCode": self.action,
                                                         "EventDateTime": self.when,
                                                         "EventOutcomeIndicator": str(self.outcome)})
        ev.append(_coded("EventID", self.event_id))
        for code in self.type_codes:
            ev.append(_coded("EventTypeCode", code))
        if self.outcome_description:
            ET.SubElement(ev, "EventOutcomeDescription").text = self.outcome_description
        root.extend(self._participants)
        if self._source is None:
            raise ValueError("an audit message needs its AuditSourceIdentification")
        root.append(self._source)
        root.extend(self._objects)
        return root

    def to_bytes(self) -> bytes:
        """The message as UTF-8 XML with its declaration, on one line (no line feed for a syslog receiver to cut)."""
        body = ET.tostring(self.element(), encoding="unicode").encode("utf-8")
        return b'<?xml version="1.0" encoding="UTF-8"?>' + body


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False
