"""The ATNA messages: every event type as a DICOM audit message valid against the schema written from PS3.15
A.5.1 (node/audit/audit-message.rng), with the codes, participants and objects PS3.15 A.5.3 asks of its kind, in
an RFC 5424 message as IHE ITI-20 wants it. The expected codes below are copied from the standard's tables."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pydicom
import pytest
from lxml import etree
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from io import BytesIO

from node.audit import schema
from node.audit.convert import Converter
from node.audit.events import Context
from node.audit.patients import Patient
from node.audit.tail import Trail
from node.ops.audit import AuditLog

pytestmark = pytest.mark.security  # not nodb: one test reads the node's database (tests/conftest.py ENGINE_TESTS)

STUDY, PATIENT = "1.2.826.0.1.3680043.8.498.1", Patient("PAT-77", "HOSP-A", "DOE^JANE")
CR = "1.2.840.10008.5.1.4.1.1.1"
SR = "1.2.840.10008.5.1.4.1.1.88.33"

# RFC 5424 section 6 (ABNF), written here from the RFC: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP
# PROCID SP MSGID SP STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(rb"^<(?P<pri>\d{1,3})>(?P<version>[1-9]\d{0,2}) "
                     rb"(?P<ts>-|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
                     rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
                     rb"(?P<sd>-|\[.*?\]) (?P<msg>.*)$", re.S)


def _events(path: Path) -> None:
    """One line of every kind, with the fields the node's call sites write (node/dicom/access.py, flow/, cli...)."""
    a = AuditLog(path)
    a.record("node-start", ae_title="AINODE", port=11112, tls_port=None, instance_id="node1", user="svc-dicom")
    a.record("config-changed", path="/etc/dicom-node/node.yaml", sha256="ab" * 32, previous_sha256="cd" * 32,
             sections=["node.tls", "rules"], security=True, detected="at start", user="root",
             reason="configuration file changed (node.tls, rules), detected at start")
    a.record("association-start", calling_ae="MODALITY", called_ae="AINODE", peer_host="10.0.0.5", peer_port=40001,
             tls=True, tls_version="TLSv1.3")
    for i in range(3):
        a.record("instance-received", calling_ae="MODALITY", peer_host="10.0.0.5", peer_port=40001, study_uid=STUDY,
                 series_uid=STUDY + ".1", sop_instance_uid=f"{STUDY}.1.{i}", sop_class_uid=CR)
    a.record("association-end", calling_ae="MODALITY", called_ae="AINODE", peer_host="10.0.0.5", peer_port=40001,
             ended="released", instances_received=3)
    a.record("association-rejected", "serious-failure", calling_ae="INTRUDER", peer_host="10.9.9.9", peer_port=5,
             reason="calling AE title not in allowed_calling_ae_titles", tls=False)
    a.record("tls-failure", "serious-failure", peer_host="10.9.9.9", peer_port=6,
             reason="TLS handshake failed: certificate verify failed")
    a.record("instance-quarantined", "minor-failure", calling_ae="MODALITY", sop_instance_uid=None, status="0xC000")
    a.record("model-request", job_id=7, rule="chest", endpoint="cxr", endpoint_host="cxr.example.org",
             study_uid=STUDY, series_uids=[STUDY + ".1"], result="done")
    a.record("job-failed", "serious-failure", job_id=7, rule="chest", endpoint="cxr", endpoint_host="cxr.example.org",
             study_uid=STUDY, series_uids=[STUDY + ".1"], reason="endpoint error: HTTP 500")
    a.record("job-parked", "serious-failure", job_id=7, rule="chest", endpoint="cxr",
             endpoint_host="cxr.example.org", study_uid=STUDY, series_uids=[STUDY + ".1"], reason="circuit open")
    a.record("result-sent", destination="pacs", destination_ae="PACS", destination_host="10.0.0.2",
             destination_port=104, tls=False, destination_url=None, study_uid=STUDY,
             sop_instance_uid=STUDY + ".9.1", sop_class_uid=SR, status="0x0000")
    a.record("result-parked", "serious-failure", destination="web", destination_ae=None, destination_host=None,
             destination_port=None, tls=True, destination_url="https://pacs.example.org/dicom-web",
             study_uid=STUDY, sop_instance_uid=STUDY + ".9.2", sop_class_uid=SR, status="409", reason="refused")
    a.record("prior-query", protocol="C-FIND", destination="pacs", called_ae="PACS", peer_host="10.0.0.2",
             url=None, sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1", for_study_uid=STUDY, matches=2,
             query={"QueryRetrieveLevel": "STUDY", "StudyDate": "20200101-20240115", "StudyTime": "",
                    "StudyInstanceUID": "", "ModalitiesInStudy": ["CR", "DX"]},
             patient_keys=["PatientID", "IssuerOfPatientID"], level="STUDY")
    a.record("prior-query", protocol="QIDO-RS", destination="web", called_ae=None, peer_host="pacs.example.org",
             url="https://pacs.example.org/dicom-web", sop_class_uid="1.2.840.10008.5.1.4.1.2.2.1",
             for_study_uid=STUDY, matches=0, query={"QueryRetrieveLevel": "STUDY", "StudyDate": "20200101-20240115",
                                                    "StudyInstanceUID": "", "ModalitiesInStudy": ["CR"]},
             patient_keys=["PatientID", "IssuerOfPatientID"], level="STUDY")
    a.record("prior-retrieved", protocol="C-GET", destination="pacs", called_ae="PACS", url=None,
             peer_host="10.0.0.2", study_uid=STUDY, instances=[[STUDY + ".7.1", CR]])
    a.record("study-deleted", study_uid=STUDY, sop_classes={CR: 3}, instances=3, reason="retention")
    a.record("action", action="retract", user="alice", peer_host="ws1.example.org", via="cli", study_uid=STUDY,
             rule="chest", reason="quality")
    a.record("action", action="rerun", user="alice", peer_host="ws1.example.org", via="http", study_uid=STUDY)
    a.record("action", action="retry", user="bob", peer_host="ws2.example.org", via="cli", destination="all",
             results=2)
    a.record("user-login", user="alice@example.org", peer_host="10.1.1.1", roles=["operator", "phi-viewer"])
    a.record("user-login-failed", "minor-failure", user="mallory", peer_host="10.1.1.2", reason="invalid credentials")
    a.record("user-logout", user="alice@example.org", peer_host="10.1.1.1")
    a.record("token-refused", "serious-failure", peer_host="10.1.1.3", reason="token expired", path="/api/retry")
    a.record("results-rejected", study_uid=STUDY, rule="chest", reason="quality", rejected=[], note_uid="1.2.3",
             destinations=["pacs"])  # details of the retract action: no message of its own
    a.record("node-stop", ae_title="AINODE", port=11112, instance_id="node1", user="svc-dicom", ended="stopped")


def _convert(path: Path, **ctx: Any) -> list[bytes]:
    context = Context(source_id="node1", ae_title="AINODE", endpoint_urls={"cxr": "https://cxr.example.org/score"},
                      patient_of=lambda uid: PATIENT if uid == STUDY else None, **ctx)
    conv = Converter(context, "dicom-node", None)
    out: list[bytes] = []
    for offset, ev in Trail(path).lines():
        out += conv.feed(offset, ev)
    return out


def _parse(message: bytes) -> tuple[re.Match, etree._Element]:
    m = RFC5424.match(message)
    assert m, message[:200]
    assert m["msg"].startswith(b"\xef\xbb\xbf"), "RFC 5424: a UTF-8 MSG starts with the BOM"
    return m, etree.fromstring(m["msg"][3:])


def _codes(el: etree._Element, tag: str) -> list[str]:
    return [c.get("csd-code") for c in el.iter(tag)]


def _participant(doc: etree._Element, role: str) -> etree._Element:
    found = [p for p in doc.findall("ActiveParticipant") if role in _codes(p, "RoleIDCode")]
    assert len(found) == 1, (role, etree.tostring(doc))
    return found[0]


def _object(doc: etree._Element, id_type: str) -> list[etree._Element]:
    return [o for o in doc.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]


def test_every_event_type_makes_schema_valid_messages_as_the_standard_describes_them(tmp_path: Path) -> None:
    _events(tmp_path / "audit.jsonl")
    messages = _convert(tmp_path / "audit.jsonl")
    by_event: dict[str, list[etree._Element]] = {}
    for message in messages:
        head, doc = _parse(message)
        assert schema.errors(head["msg"][3:]) == [], head["msg"][3:]
        # IHE ITI-20: facility 10, severity 5 (or 4 for a failure), MSGID IHE+RFC-3881, version 1
        outcome = doc.find("EventIdentification").get("EventOutcomeIndicator")
        assert int(head["pri"]) == 10 * 8 + (5 if outcome == "0" else 4)
        assert head["version"] == b"1" and head["msgid"] == b"IHE+RFC-3881" and head["app"] == b"dicom-node"
        ev = doc.find("EventIdentification")
        by_event.setdefault(ev.find("EventID").get("csd-code"), []).append(doc)
        source = doc.find("AuditSourceIdentification")
        assert source.get("AuditSourceID") == "node1"

    # how many of each: 2 app activity, 1 transfer in + 1 quarantined + 2 results, 3 exports, 2 queries...
    assert {k: len(v) for k, v in by_event.items()} == {
        "110100": 2, "110113": 4, "110104": 5, "110106": 3, "110112": 2, "110105": 1, "110103": 3, "110114": 3}

    # A.5.3.1 Application Activity: E, type 110120/110121, the application (110150) and who started it (110151)
    start, stop = by_event["110100"]
    for doc, code in ((start, "110120"), (stop, "110121")):
        assert doc.find("EventIdentification").get("EventActionCode") == "E"
        assert _codes(doc.find("EventIdentification"), "EventTypeCode") == [code]
        app = _participant(doc, "110150")
        assert app.get("UserIsRequestor") == "false" and app.get("AlternativeUserID") == "AETITLES=AINODE"
        assert _participant(doc, "110151").get("UserID") == "svc-dicom"

    # A.5.3.7 DICOM Instances Transferred: one per study of the association, 3 instances, the peer as source
    received = [d for d in by_event["110104"] if _outcome(d) == "0"
                and _participant_or_none(d, "110153") is not None
                and _participant(d, "110153").get("AlternativeUserID") == "AETITLES=MODALITY"]
    [transfer] = received
    assert transfer.find("EventIdentification").get("EventActionCode") == "C"
    src, dst = _participant(transfer, "110153"), _participant(transfer, "110152")
    assert src.get("NetworkAccessPointID") == "10.0.0.5" and src.get("UserIsRequestor") == "true"
    assert dst.get("AlternativeUserID") == "AETITLES=AINODE"
    [study] = _object(transfer, "110180")
    assert study.get("ParticipantObjectID") == STUDY and study.get("ParticipantObjectTypeCode") == "2" \
        and study.get("ParticipantObjectTypeCodeRole") == "3"
    [sop] = study.iter("SOPClass")
    assert sop.get("UID") == CR and sop.get("NumberOfInstances") == "3"
    assert [i.get("UID") for i in sop.iter("Instance")] == [f"{STUDY}.1.{i}" for i in range(3)]
    [patient] = _object(transfer, "2")
    assert patient.get("ParticipantObjectID") == "PAT-77^^^HOSP-A"
    assert patient.get("ParticipantObjectTypeCode") == "1" and patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert patient.findtext("ParticipantObjectName") == "DOE^JANE"
    quarantined = [d for d in by_event["110104"] if _outcome(d) == "4"]
    assert len(quarantined) == 1 and "0xC000" in quarantined[0].findtext("EventIdentification/EventOutcomeDescription")
    outgoing = [d for d in by_event["110104"] if _participant(d, "110153").get("UserID") == "node1"]
    [retrieved] = [d for d in by_event["110104"]
                   if _participant(d, "110153").get("AlternativeUserID") == "AETITLES=PACS"]
    assert _participant(retrieved, "110152").get("UserIsRequestor") == "true"  # the node asked for them
    assert [i.get("UID") for i in retrieved.iter("Instance")] == [STUDY + ".7.1"]
    assert sorted(_outcome(d) for d in outgoing) == ["0", "8"]
    sent = next(d for d in outgoing if _outcome(d) == "0")
    assert _participant(sent, "110152").get("AlternativeUserID") == "AETITLES=PACS"
    assert _participant(sent, "110152").get("NetworkAccessPointID") == "10.0.0.2"
    assert [i.get("UID") for i in sent.iter("Instance")] == [STUDY + ".9.1"]

    # A.5.3.11 Security Alert: type codes, the reporting node, the alert subject with its description
    alerts = {tuple(_types(d)): d for d in by_event["110113"]}
    assert set(alerts) == {("110126",), ("110132",), ("110131", "110129")}
    assert len([d for d in by_event["110113"] if _types(d) == ["110126"]]) == 2
    changed = alerts[("110131", "110129")]
    [subject] = _object(changed, "12")
    assert subject.get("ParticipantObjectID") == "file:///etc/dicom-node/node.yaml"
    details = {d.get("type"): base64.b64decode(d.get("value")).decode()
               for d in subject.iter("ParticipantObjectDetail")}
    assert details["Changed"] == "node.tls, rules" and details["SHA-256"] == "ab" * 32
    token = alerts[("110132",)]
    assert token.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert {p.get("NetworkAccessPointID") for p in token.findall("ActiveParticipant")} >= {"10.1.1.3"}

    # A.5.3.4 Export: R, the node as source, the endpoint as destination (a URI), the study and the patient
    exports = by_event["110106"]
    assert sorted(_outcome(d) for d in exports) == ["0", "8", "8"]
    for doc in exports:
        assert doc.find("EventIdentification").get("EventActionCode") == "R"
        dest = _participant(doc, "110152")
        assert dest.get("UserID") == "https://cxr.example.org/score" and "110154" in _codes(dest, "RoleIDCode")
        assert _codes(dest, "MediaType") == ["110037"] and dest.get("NetworkAccessPointID") == "cxr.example.org"
        assert _participant(doc, "110153").get("UserIsRequestor") == "true"
        assert [o.get("ParticipantObjectID") for o in _object(doc, "110180")] == [STUDY]
        assert len(_object(doc, "2")) == 1

    # A.5.3.10 Query: E, source and destination, the SOP class queried with the query itself (and its syntax)
    cfind, qido = by_event["110112"]
    for doc in (cfind, qido):
        assert doc.find("EventIdentification").get("EventActionCode") == "E"
        [q] = _object(doc, "110181")
        assert q.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
        assert _participant(doc, "110153").get("UserID") == "node1" and _participant(doc, "110152") is not None
    [q] = _object(cfind, "110181")
    details = {d.get("type"): base64.b64decode(d.get("value")).decode() for d in q.iter("ParticipantObjectDetail")}
    assert details["TransferSyntax"] == "1.2.840.10008.1.2"
    sent_query = read_dataset(BytesIO(base64.b64decode(q.findtext("ParticipantObjectQuery"))), True, True)
    assert sent_query.PatientID == "PAT-77" and sent_query.IssuerOfPatientID == "HOSP-A"
    assert sent_query.StudyDate == "20200101-20240115" and list(sent_query.ModalitiesInStudy) == ["CR", "DX"]
    assert sent_query.QueryRetrieveLevel == "STUDY"
    [q] = _object(qido, "110181")
    assert base64.b64decode(q.findtext("ParticipantObjectQuery")).decode() == (  # keys in tag order, as sent
        "/studies?StudyDate=20200101-20240115&ModalitiesInStudy=CR&PatientID=PAT-77&IssuerOfPatientID=HOSP-A"
        "&includefield=StudyInstanceUID")

    # A.5.3.8 DICOM Study Deleted: D, the study with its SOP classes, the patient (from before the purge)
    [deleted] = by_event["110105"]
    assert deleted.find("EventIdentification").get("EventActionCode") == "D"
    [study] = _object(deleted, "110180")
    assert [(s.get("UID"), s.get("NumberOfInstances")) for s in study.iter("SOPClass")] == [(CR, "3")]
    assert len(_object(deleted, "2")) == 1

    # A.5.3.6 DICOM Instances Accessed for the write actions, with the person who acted
    actions = by_event["110103"]
    assert [d.find("EventIdentification").get("EventActionCode") for d in actions] == ["D", "C", "U"]
    people = [next(p for p in d.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true") for d in actions]
    assert [(p.get("UserID"), p.get("NetworkAccessPointID")) for p in people] == [
        ("alice", "ws1.example.org"), ("alice", "ws1.example.org"), ("bob", "ws2.example.org")]
    assert [o.get("ParticipantObjectID") for o in _object(actions[0], "110180")] == [STUDY]

    # A.5.3.12 User Authentication: E, Login / Logout, the person authenticated, failures with their outcome
    auth = by_event["110114"]
    assert [(_types(d), d.find("EventIdentification")
             .get("EventOutcomeIndicator")) for d in auth] == [(["110122"], "0"), (["110122"], "4"), (["110123"], "0")]
    person = next(p for p in auth[0].findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert person.get("UserID") == "alice@example.org" and person.get("NetworkAccessPointID") == "10.1.1.1"


def _outcome(doc: etree._Element) -> str:
    return doc.find("EventIdentification").get("EventOutcomeIndicator")


def _types(doc: etree._Element) -> list[str]:
    return _codes(doc.find("EventIdentification"), "EventTypeCode")


def _participant_or_none(doc: etree._Element, role: str) -> etree._Element | None:
    found = [p for p in doc.findall("ActiveParticipant") if role in _codes(p, "RoleIDCode")]
    return found[0] if found else None


def test_the_schema_check_refuses_what_the_standard_does_not_allow(tmp_path: Path) -> None:
    """The check can fail: each mutation of a valid message breaks one rule of A.5.1."""
    _events(tmp_path / "audit.jsonl")
    good = _parse(_convert(tmp_path / "audit.jsonl")[0])[1]
    assert schema.errors(etree.tostring(good)) == []
    mutations = {
        "no AuditSourceIdentification": lambda d: d.remove(d.find("AuditSourceIdentification")),
        "outcome 3": lambda d: d.find("EventIdentification").set("EventOutcomeIndicator", "3"),
        "action X": lambda d: d.find("EventIdentification").set("EventActionCode", "X"),
        "no time zone is still a dateTime, but no time is not": lambda d: d.find("EventIdentification").set(
            "EventDateTime", "yesterday"),
        "no ActiveParticipant": lambda d: [d.remove(p) for p in d.findall("ActiveParticipant")],
        "UserIsRequestor missing": lambda d: d.find("ActiveParticipant").attrib.pop("UserIsRequestor"),
        "coded value without originalText": lambda d: d.find("EventIdentification/EventID").attrib.pop("originalText"),
        "participants after the source": lambda d: d.append(d.find("ActiveParticipant")),
    }
    for what, mutate in mutations.items():
        doc = etree.fromstring(etree.tostring(good))
        mutate(doc)
        assert schema.errors(etree.tostring(doc)), what


def test_a_large_transfer_lists_counts_only_and_stays_under_the_repository_limit(tmp_path: Path) -> None:
    a = AuditLog(tmp_path / "audit.jsonl")
    a.record("association-start", calling_ae="CT", called_ae="AINODE", peer_host="10.0.0.7", peer_port=1)
    for i in range(2000):
        a.record("instance-received", calling_ae="CT", peer_host="10.0.0.7", peer_port=1, study_uid=STUDY,
                 series_uid=STUDY + ".2", sop_instance_uid=f"{STUDY}.2.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    a.record("instance-received", calling_ae="CT", peer_host="10.0.0.7", peer_port=1, study_uid=STUDY + ".5",
             series_uid=STUDY + ".5.1", sop_instance_uid=STUDY + ".5.1.1", sop_class_uid=CR)
    a.record("association-end", calling_ae="CT", called_ae="AINODE", peer_host="10.0.0.7", peer_port=1,
             ended="released", instances_received=2001)
    big, small = _convert(tmp_path / "audit.jsonl")
    assert len(big) < 32768 and schema.errors(_parse(big)[0]["msg"][3:]) == []
    [sop] = _parse(big)[1].iter("SOPClass")
    assert sop.get("NumberOfInstances") == "2000" and not list(sop.iter("Instance"))
    assert [i.get("UID") for i in _parse(small)[1].iter("Instance")] == [STUDY + ".5.1.1"]


def test_the_query_the_message_carries_is_the_one_the_prior_lookup_sent() -> None:
    """The trail line drops the patient's identifiers; the message puts back exactly what went to the PACS."""
    from node.audit.queries import query_bytes, query_fields

    sent = Dataset()  # as node/models/cxrreportgen/priors.py builds its study-level C-FIND
    sent.QueryRetrieveLevel = "STUDY"
    sent.PatientID = "PAT-77"
    sent.IssuerOfPatientID = "HOSP-A"
    sent.StudyDate = "20190101-20240115"
    sent.StudyTime = ""
    sent.StudyInstanceUID = ""
    sent.ModalitiesInStudy = ["CR"]
    fields = query_fields(sent)
    assert "PAT-77" not in repr(fields) and "HOSP-A" not in repr(fields)
    body, details = query_bytes({"protocol": "C-FIND", **fields}, PATIENT)
    from pynetdicom.dsutils import encode

    assert body == encode(sent, True, True)
    from node.dicomweb.qido import qido_request

    path, params = qido_request(sent)
    body, _ = query_bytes({"protocol": "QIDO-RS", **fields}, PATIENT)
    from urllib.parse import urlencode

    assert body.decode() == f"{path}?{urlencode(params)}"


def test_a_patient_is_read_from_the_study_files_and_kept_past_the_purge(tmp_path: Path, data: Path) -> None:
    from node.audit.patients import PatientDirectory
    from node.store.records import InstanceRecord
    from node.store.state import Store

    src = pydicom.dcmread(data / "cxr" / "cr_pa_jpeg_baseline.dcm")
    src.PatientID, src.IssuerOfPatientID, src.PatientName = "PAT-9", "HOSP-B", "ROE^RICHARD"
    path = tmp_path / "i.dcm"
    src.save_as(path, enforce_file_format=True)
    store = Store.open(f"sqlite:///{tmp_path / 'node.db'}")
    record = InstanceRecord(sop_instance_uid=str(src.SOPInstanceUID), study_uid=str(src.StudyInstanceUID),
                            series_uid=str(src.SeriesInstanceUID), sop_class_uid=str(src.SOPClassUID),
                            transfer_syntax_uid=str(src.file_meta.TransferSyntaxUID), path=str(path),
                            size_bytes=path.stat().st_size, calling_ae="X")
    store.record_instances([record], quiet_seconds=10)
    d = PatientDirectory(tmp_path / "patients.db", store.engine)
    assert d.of_study(str(src.StudyInstanceUID)) == Patient("PAT-9", "HOSP-B", "ROE^RICHARD")
    path.unlink()  # purged
    assert d.of_study(str(src.StudyInstanceUID)) == Patient("PAT-9", "HOSP-B", "ROE^RICHARD")
    assert oct((tmp_path / "patients.db").stat().st_mode & 0o777) == "0o600"
    d.forget(str(src.StudyInstanceUID))
    assert d.of_study(str(src.StudyInstanceUID)) is None
