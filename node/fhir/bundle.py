"""A :class:`~node.reports.model.Report` as one FHIR R4 transaction Bundle (the resource map of docs/hospital-it.md).

* Patient, ServiceRequest (accession, identifier type ``v2-0203#ACSN``) and ImagingStudy (``urn:dicom:uid`` /
  ``urn:oid:<StudyInstanceUID>``) are conditional creates (``ifNoneExist`` on their identifier): the EHR's own
  records are used when it has them;
* the Device (the model: name, version), the DiagnosticReport (one identifier for every version of the rule's
  report on the study) and one Observation per finding, classified image and segment (identifier the SR's tracking
  UID) are conditional updates (``PUT Type?identifier=...``): a resend updates instead of adding;
* the Provenance (agent: the Device; target: the report and its observations) has an id derived from the report
  version (``PUT Provenance/<id>``, update-as-create).

Following the DICOM SR to FHIR IG where R4 allows: Observation ``partOf`` and ``derivedFrom`` the ImagingStudy,
``device`` the model, ``valueCodeableConcept`` the SR's code with the sentence as text. The AI is never in
``DiagnosticReport.performer`` (R4 takes no Device there). The DiagnosticReport and Observations carry
``meta.security`` ``v3-ObservationValue#AIAST`` (HL7 AI Transparency on FHIR). Statuses: ``preliminary``, then
``corrected`` after a re-run (the observations the re-run no longer states become ``entered-in-error``), and
``entered-in-error`` for everything of a retracted report. Full URLs are name-based UUIDs of the report version,
so a resend is the same Bundle.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from node.reports.model import Coded, Content, Report, segment_sentence

AIAST = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST",
         "display": "artificial intelligence asserted"}
DICOM_UID = "urn:dicom:uid"
DEFAULT_ACCESSION_SYSTEM = "urn:dicom-ai-node:accession"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SYSTEMS = {"SCT": "http://snomed.info/sct", "SRT": "http://snomed.info/sct", "LN": "http://loinc.org", "DCM": DCM,
           "RADLEX": "http://radlex.org", "UCUM": "http://unitsofmeasure.org",
           "99AINODE": "urn:dicom-ai-node:codes"}
REPORT_CODE = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}
RAD = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
IMAGING = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
           "display": "Imaging"}
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN",
                    "display": "Accession ID"}]}
FINDING = Coded(value="121071", scheme="DCM", meaning="Finding")
STATUS = {"preliminary": "preliminary", "corrected": "corrected", "retracted": "entered-in-error"}
ACTIVITY = {"preliminary": "CREATE", "corrected": "UPDATE", "retracted": "NULLIFY"}


def coding(code: Coded) -> dict[str, str]:
    """A DICOM code as a FHIR Coding (known schemes by their FHIR URI, others as urn:dicom:scheme:<designator>)."""
    system = SYSTEMS.get(code.scheme, f"urn:dicom:scheme:{code.scheme}")
    return {"system": system, "code": code.value, "display": code.meaning}


def oid_identifier(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def _query(identifier: dict[str, str]) -> str:
    return f"identifier={identifier['system']}|{identifier['value']}"


def fhir_datetime(date: str, clock: str) -> str | None:
    """DICOM date + time as a FHIR dateTime (local time without offset: a date only when the time is missing)."""
    if len(date) != 8 or not date.isdigit():
        return None
    out = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = "".join(ch for ch in clock.split(".")[0] if ch.isdigit())
    if len(digits) >= 4:  # FHIR wants an offset with a time: the node's own (DICOM times are local)
        digits = (digits + "00")[:6]
        offset = time.strftime("%z", time.localtime())
        return f"{out}T{digits[:2]}:{digits[2:4]}:{digits[4:6]}{offset[:3]}:{offset[3:]}"
    return out


def instant(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + "Z"


def patient_identifier(content: Content, system: str | None) -> dict[str, str]:
    """Patient.identifier: the DICOM PatientID under the configured system or one from its issuer."""
    p = content.patient
    if not p.id:  # no ID in the header: a patient of this study only
        return {"system": "urn:dicom-ai-node:patient-of-study", "value": content.study.uid}
    if system:
        return {"system": system, "value": p.id}
    issuer = p.issuer_oid or (p.issuer if p.issuer.replace(".", "").isdigit() else "")
    if issuer:
        return {"system": f"urn:oid:{issuer}", "value": p.id}
    return {"system": f"urn:dicom-ai-node:patient-id:{p.issuer or 'unspecified'}", "value": p.id}


class _Entries:
    """Entries with name-based full URLs (the same Bundle every time it is built)."""

    def __init__(self, report: Report) -> None:
        self.ns = uuid.uuid5(uuid.NAMESPACE_OID, report.uid)
        self.items: list[dict[str, Any]] = []

    def url(self, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(self.ns, key)}"

    def add(self, key: str, resource: dict[str, Any], request: dict[str, str]) -> dict[str, str]:
        self.items.append({"fullUrl": self.url(key), "resource": resource, "request": request})
        return {"reference": self.url(key)}


def _name(pn: str) -> list[dict[str, Any]]:
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [g for g in (given, middle) if g]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return [name] if name else []


def _observations(entries: _Entries, content: Content, status: str, refs: dict[str, Any], issued: str,
                  effective: str | None) -> list[dict[str, str]]:
    out = []

    def observation(uid: str, code: Coded, value: dict[str, Any], components: list | None = None) -> None:
        ident = oid_identifier(uid)
        resource: dict[str, Any] = {
            "resourceType": "Observation", "meta": {"security": [AIAST]}, "identifier": [ident],
            "status": status, "category": [{"coding": [IMAGING]}], "code": {"coding": [coding(code)]},
            "subject": refs["patient"], "partOf": [refs["study"]], "derivedFrom": [refs["study"]],
            "device": refs["device"], "issued": issued, "valueCodeableConcept": value}
        if effective:
            resource["effectiveDateTime"] = effective
        if components:
            resource["component"] = components
        out.append(entries.add(f"observation/{uid}", resource, {"method": "PUT", "url": f"Observation?{_query(ident)}"}))

    for f in content.findings:
        value = {"text": f.text, **({"coding": [coding(f.code)]} if f.code else {})}
        observation(f.uid, FINDING, value)
    for image in content.labels:
        scores = [{"code": {"coding": [coding(s.label)]},
                   "valueQuantity": {"value": round(s.probability, 6), "unit": "1", "system": SYSTEMS["UCUM"],
                                     "code": "1"}} for s in image.scores]
        winners = image.winners or [(FINDING, None)]
        for i, (label_set, label) in enumerate(winners):
            uid = image.uid if i == 0 else f"{image.uid}.{i + 1}"
            value = {"text": image.text, **({"coding": [coding(label)]} if label is not None else {})}
            observation(uid, label_set, value, scores)
    for seg in content.segments:
        value = {"text": segment_sentence(seg), **({"coding": [coding(seg.type)]} if seg.type else {})}
        observation(seg.uid, seg.category or FINDING, value)
    return out


def build_bundle(report: Report, dest: Any) -> dict[str, Any]:
    """The transaction Bundle of ``report`` for one ``type: fhir`` destination (its identifier systems)."""
    content, study = report.content, report.content.study
    entries = _Entries(report)
    issued = instant(report.created_at)
    effective = fhir_datetime(study.date, study.time)
    refs: dict[str, Any] = {}
    pid = patient_identifier(content, getattr(dest, "patient_identifier_system", None))
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [pid]}
    if _name(content.patient.name):
        patient["name"] = _name(content.patient.name)
    gender = {"M": "male", "F": "female", "O": "other"}.get(content.patient.sex)
    if gender:
        patient["gender"] = gender
    birth = fhir_datetime(content.patient.birth_date, "")
    if birth:
        patient["birthDate"] = birth
    refs["patient"] = entries.add("patient", patient, {"method": "POST", "url": "Patient", "ifNoneExist": _query(pid)})
    accession = None
    if study.accession:
        accession = {"type": ACSN, "system": getattr(dest, "accession_identifier_system", None)
                     or DEFAULT_ACCESSION_SYSTEM, "value": study.accession}
        order = {"resourceType": "ServiceRequest", "identifier": [accession], "status": "active", "intent": "order",
                 "subject": refs["patient"],
                 "code": {"coding": [coding(study.procedure)]} if study.procedure else
                 {"text": study.description or "Imaging study"}}
        refs["order"] = entries.add("order", order, {"method": "POST", "url": "ServiceRequest",
                                                     "ifNoneExist": f"identifier={accession['system']}|{study.accession}"})
    study_id = oid_identifier(study.uid)
    imaging: dict[str, Any] = {"resourceType": "ImagingStudy", "identifier": [study_id] + ([accession] if accession else []),
                               "status": "available", "subject": refs["patient"]}
    if "order" in refs:
        imaging["basedOn"] = [refs["order"]]
    if effective:
        imaging["started"] = effective
    if study.description:
        imaging["description"] = study.description
    if study.modalities:
        imaging["modality"] = [{"system": DCM, "code": m} for m in study.modalities]
    refs["study"] = entries.add("study", imaging, {"method": "POST", "url": "ImagingStudy", "ifNoneExist": _query(study_id)})
    algorithm = content.algorithm
    device_id = oid_identifier(algorithm.device_uid or _uid_of(algorithm.name, algorithm.version))
    device = {"resourceType": "Device", "identifier": [device_id], "status": "active",
              "deviceName": [{"name": algorithm.name + (" (EMULATED)" if algorithm.emulated else ""),
                              "type": "model-name"}], "version": [{"value": algorithm.version}]}
    if algorithm.manufacturer:
        device["manufacturer"] = algorithm.manufacturer
    refs["device"] = entries.add("device", device, {"method": "PUT", "url": f"Device?{_query(device_id)}"})
    status = STATUS[report.status]
    results = _observations(entries, content, status, refs, issued, effective)
    if report.superseded is not None:  # what the replaced version said and this one does not: withdrawn
        current = {e["fullUrl"] for e in entries.items}
        old = _Entries(report)
        _observations(old, report.superseded, "entered-in-error", refs, issued, effective)
        entries.items += [e for e in old.items if e["fullUrl"] not in current]
    dr_id = oid_identifier(report.report_id)
    conclusion = " ".join(content.sentences + [report.note])
    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "meta": {"security": [AIAST]}, "identifier": [dr_id], "status": status,
        "category": [{"coding": [RAD]}], "code": {"coding": [REPORT_CODE]}, "subject": refs["patient"],
        "imagingStudy": [refs["study"]], "result": results, "issued": issued, "conclusion": conclusion}
    if "order" in refs:
        diagnostic["basedOn"] = [refs["order"]]
    if effective:
        diagnostic["effectiveDateTime"] = effective
    report_ref = entries.add("report", diagnostic, {"method": "PUT", "url": f"DiagnosticReport?{_query(dr_id)}"})
    provenance_id = "ainode-" + hashlib.sha256(report.uid.encode()).hexdigest()[:40]
    provenance = {"resourceType": "Provenance", "id": provenance_id, "target": [report_ref, *results],
                  "recorded": issued,
                  "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                           "code": ACTIVITY[report.status]}]},
                  "agent": [{"type": {"coding": [{
                      "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                      "code": "author", "display": "Author"}]}, "who": refs["device"]}],
                  "entity": [{"role": "source", "what": refs["study"]}]}
    entries.add("provenance", provenance, {"method": "PUT", "url": f"Provenance/{provenance_id}"})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries.items}


def _uid_of(name: str, version: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["dicom-ai-node/algorithm", name, version])
