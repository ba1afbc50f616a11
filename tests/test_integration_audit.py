"""The hospital-workflow traffic in the audit trail and as ATNA messages (node/audit/workflow_events.py).

Each test drives the node's own code against a real peer (the test RIS on hl7apy's MLLP server, the test EHR,
Orthanc, python-hl7's MLLP client, pynetdicom as the modality, the UPS-RS emulator), then turns the trail the node
wrote into DICOM audit messages with the forwarder's converter, checks each against the PS3.15 A.5.1 schema and
reads what PS3.15 A.5.3 asks of its kind. Expected values come from the peers (the MSH-10 the RIS received, the
EHR's URL, the DICOM file's Patient ID, the HL7 message's PID-3) and from the standard's code tables.
"""

from __future__ import annotations

import base64
import socket
import ssl
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from lxml import etree
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid

from node.audit import schema
from node.audit.convert import Converter
from node.audit.events import Context
from node.audit.patients import PatientDirectory
from node.audit.tail import Trail
from node.config import parse_config
from node.flow.deliver import deliver_due
from node.ops.audit import read_events
from node.store.state import InstanceRecord, Store
from support.mllp_client import msa_code, send_mllp

pytestmark = [pytest.mark.security, pytest.mark.slow]
HL7_DATA = Path(__file__).parent / "data" / "hl7"


# --- reading the trail as the forwarder does ------------------------------------------------------------------------

def atna(trail: Path, engine: Any, tmp: Path) -> list[tuple[dict[str, Any], etree._Element]]:
    """(trail line, ATNA message) for every message the converter makes; each one schema-valid."""
    directory = PatientDirectory(tmp / f"patients-{trail.stat().st_size}.db", engine)
    ctx = Context(source_id="node1", ae_title="AINODE", patient_of=directory.of_study,
                  patient_of_message=directory.of_hl7_message)
    conv = Converter(ctx, "dicom-node", None)
    out = []
    for offset, ev in Trail(trail).lines():
        for message in conv.feed(offset, ev):
            xml = message[message.index(b"\xef\xbb\xbf") + 3:]
            assert schema.errors(xml) == [], xml
            out.append((ev, etree.fromstring(xml)))
    directory.close()
    return out


def codes(el: etree._Element, tag: str) -> list[str]:
    return [c.get("csd-code") for c in el.iter(tag)]


def event(doc: etree._Element) -> tuple[str, str, str]:
    """(EventID code, EventActionCode, EventOutcomeIndicator)."""
    ev = doc.find("EventIdentification")
    return ev.find("EventID").get("csd-code"), ev.get("EventActionCode"), ev.get("EventOutcomeIndicator")


def participant(doc: etree._Element, role: str) -> etree._Element:
    (found,) = [p for p in doc.findall("ActiveParticipant") if role in codes(p, "RoleIDCode")]
    return found


def objects(doc: etree._Element, id_type: str) -> list[etree._Element]:
    return [o for o in doc.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]


def details(obj: etree._Element) -> dict[str, str]:
    return {d.get("type"): base64.b64decode(d.get("value")).decode() for d in obj.iter("ParticipantObjectDetail")}


def description(doc: etree._Element) -> str:
    return doc.findtext("EventIdentification/EventOutcomeDescription") or ""


def with_patient(source: Path, out: Path, **attrs: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(source)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(out, enforce_file_format=True)
    return ds


# --- reports to a RIS and an EHR: Export ----------------------------------------------------------------------------

def test_reports_to_the_ris_and_the_ehr_are_exports_naming_the_patient_the_study_and_the_recipient(
        tmp_path: Path, data: Path) -> None:
    from node.reports.job import build_report
    from node.reports.read import read_results
    from support import reports
    from support.fhir_receiver import FhirReceiver
    from support.ris import Ris

    made = reports.cxr_report(data)
    study = str(made.source.StudyInstanceUID)
    image = with_patient(data / "cxr" / "cr_pa_mono1_uncompressed.dcm", tmp_path / "img.dcm",
                         StudyInstanceUID=study, PatientID="PAT-0042", IssuerOfPatientID="HOSP")
    with Ris() as ris, Ris() as refusing, FhirReceiver() as ehr:
        refusing.script("AR")
        retry = {"backoff_initial_seconds": 0, "backoff_max_seconds": 0, "timeout_seconds": 10}
        cfg = parse_config({
            "node": {"storage_dir": str(tmp_path / "var")},
            "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
            "destinations": {"ris": {"type": "hl7v2", "host": "127.0.0.1", "port": ris.port, **retry},
                             "ris-ar": {"type": "hl7v2", "host": "127.0.0.1", "port": refusing.port, **retry},
                             "ehr": {"type": "fhir", "url": ehr.url, **retry}},
            "rules": [{"name": "chest", "endpoint": "cxr", "send_to": ["ris", "ris-ar", "ehr"]}]})
        store = Store.open(cfg.database_url)
        store.record_instances([InstanceRecord(str(image.SOPInstanceUID), study, str(image.SeriesInstanceUID),
                                               str(image.SOPClassUID), str(image.file_meta.TransferSyntaxUID),
                                               str(tmp_path / "img.dcm"), 1, "MOD")], quiet_seconds=0)
        (jid,) = store.create_jobs(study, 1, [("chest", "cxr", [str(image.SeriesInstanceUID)])])
        job = store.claim_job(jid, "t:1:a", 60)
        report = build_report(job=job, content=read_results(made.results, made.source), previous=None)
        path = tmp_path / f"{report.uid}.json"
        path.write_bytes(report.to_json())
        assert store.finish_job(jid, "t:1:a", state="done", outcome="ok", destinations=["ris", "ris-ar", "ehr"],
                                new_results=[{"sop_instance_uid": report.uid, "study_uid": study, "series_uid": "",
                                              "sop_class_uid": "", "kind": "report", "path": str(path)}])
        assert deliver_due(store, cfg, "ris", "t:1:a").delivered == 1
        assert deliver_due(store, cfg, "ehr", "t:1:a").delivered == 1
        assert deliver_due(store, cfg, "ris-ar", "t:1:a").parked == 1
        msh10 = ris.received[0].control_id  # as the RIS received it
        assert refusing.received[0].control_id == msh10

    lines = read_events(cfg.audit_path)
    assert not [e for e in lines if e["event"].startswith("result-")], "a report is no DICOM instance transfer"
    found = [(ev, doc) for ev, doc in atna(cfg.audit_path, store.engine, tmp_path)
             if ev["event"].startswith("report-")]
    by_dest = {ev["destination"]: doc for ev, doc in found}
    assert sorted(by_dest) == ["ehr", "ris", "ris-ar"]
    for name, doc in by_dest.items():
        assert event(doc) == ("110106", "R", "8" if name == "ris-ar" else "0"), name  # A.5.3.4 Export
        src = participant(doc, "110153")
        assert src.get("UserID") == "node1" and src.get("UserIsRequestor") == "true"
        dest = participant(doc, "110152")
        assert "110154" in codes(dest, "RoleIDCode") and codes(dest, "MediaType") == ["110037"]
        assert dest.get("AlternativeUserID") == name and dest.get("UserIsRequestor") == "false"
        (study_obj,) = objects(doc, "110180")
        assert study_obj.get("ParticipantObjectID") == study
        assert (study_obj.get("ParticipantObjectTypeCode"), study_obj.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
        assert details(study_obj)["Report"] == report.uid
        (patient,) = objects(doc, "2")
        assert patient.get("ParticipantObjectID") == "PAT-0042^^^HOSP"  # from the study's DICOM file
    assert participant(by_dest["ris"], "110152").get("UserID") == f"mllp://127.0.0.1:{ris.port}"
    assert details(objects(by_dest["ris"], "110180")[0])["MSH-10"] == msh10
    assert participant(by_dest["ehr"], "110152").get("UserID") == ehr.url
    assert "MSH-10" not in details(objects(by_dest["ehr"], "110180")[0])
    assert "scripted refusal" in description(by_dest["ris-ar"])


# --- verify_by: c-find: a Query before a resend ---------------------------------------------------------------------

def test_the_c_find_of_verify_by_is_a_query_with_the_identifier_as_sent(tmp_path: Path, data: Path) -> None:
    from support.orthanc import Orthanc

    study = generate_uid()
    result = with_patient(data / "cxr" / "cr_pa_jpeg_baseline.dcm", tmp_path / "result.dcm", StudyInstanceUID=study,
                          SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid(), PatientID="PAT-9",
                          IssuerOfPatientID="")
    with Orthanc(tmp_path / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", 11112)}) as pacs:
        pacs.upload(tmp_path / "result.dcm")  # stored at the PACS by a send whose answer the node never saw
        cfg = parse_config({
            "node": {"storage_dir": str(tmp_path / "var")},
            "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
            "destinations": {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
                                      "verify_by": "c-find", "timeout_seconds": 30}},
            "rules": [{"name": "r", "endpoint": "cxr", "send_to": ["pacs"]}]})
        store = Store.open(cfg.database_url)
        (jid,) = store.create_jobs(study, 1, [("r", "cxr", [str(result.SeriesInstanceUID)])])
        store.claim_job(jid, "t:1:a", 60)
        assert store.finish_job(jid, "t:1:a", state="done", outcome="ok", destinations=["pacs"], new_results=[
            {"sop_instance_uid": str(result.SOPInstanceUID), "study_uid": study,
             "series_uid": str(result.SeriesInstanceUID), "sop_class_uid": str(result.SOPClassUID), "kind": "sr",
             "path": str(tmp_path / "result.dcm")}])
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE outbox SET in_flight = TRUE")
        report = deliver_due(store, cfg, "pacs", "t:1:a")
        assert report.verified == 1 and pacs.cstore_counts().get(str(result.SOPInstanceUID), 0) == 0
    (ev, doc), = [(e, d) for e, d in atna(cfg.audit_path, store.engine, tmp_path) if e["event"] == "verify-query"]
    assert ev["matches"] == 1
    assert event(doc) == ("110112", "E", "0")  # A.5.3.10 Query
    assert participant(doc, "110153").get("UserID") == "node1"
    pacs_p = participant(doc, "110152")
    assert pacs_p.get("AlternativeUserID") == "AETITLES=ORTHANC" and pacs_p.get("NetworkAccessPointID") == "127.0.0.1"
    (q,) = objects(doc, "110181")
    sent = read_dataset(BytesIO(base64.b64decode(q.findtext("ParticipantObjectQuery"))), True, True)
    assert (sent.QueryRetrieveLevel, sent.SOPInstanceUID, sent.StudyInstanceUID) == (
        "IMAGE", result.SOPInstanceUID, study)
    assert [o.get("ParticipantObjectID") for o in objects(doc, "2")] == ["PAT-9"]  # from the result's header


# --- the MLLP listener: orders in, refusals, TLS -------------------------------------------------------------------

def test_hl7_messages_in_are_procedure_records_and_a_failed_tls_handshake_a_security_alert(tmp_path: Path) -> None:
    from node.hl7.listener import MllpListener
    from support.tlscerts import make_pki

    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "mllp": {"host": "127.0.0.1", "port": 0}})
    store = Store.open(cfg.database_url)
    orm = (HL7_DATA / "orm_o01.hl7").read_bytes()
    cancel = orm.replace(b"ORC|NW|", b"ORC|CA|").replace(b"ORM-0001", b"ORM-0002")
    no_pid = orm.replace(b"PAT-0042^^^HOSP^MR", b"").replace(b"ORM-0001", b"ORM-0003")
    listener = MllpListener(cfg, store).start()
    try:
        acks = [send_mllp(listener.port, m)[0] for m in (orm, cancel, no_pid, b"HELLO, this is not HL7")]
    finally:
        listener.stop()
    assert [msa_code(a) for a in acks] == \
        ["AA", "AA", "AE", "AR"]
    pki = make_pki(tmp_path / "pki")
    tls_cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")}, "mllp": {
        "host": "127.0.0.1", "port": 0, "tls": {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                                                "ca_file": str(pki.ca.cert)}}})
    listener = MllpListener(tls_cfg, store).start()
    try:
        rogue = ssl.create_default_context(cafile=str(pki.ca.cert))
        rogue.load_cert_chain(str(pki.rogue_client.cert), str(pki.rogue_client.key))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw:
                with rogue.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"\x0b" + orm + b"\x1c\x0d")
                    if not tls.recv(4096):
                        raise ConnectionError("closed")
    finally:
        listener.stop()

    msgs = atna(cfg.audit_path, store.engine, tmp_path)
    records = {ev.get("control_id") or ev.get("reason"): doc for ev, doc in msgs if ev["event"] == "hl7-received"}
    assert len(records) == 4, list(records)
    assert event(records["ORM-0001"]) == ("110111", "C", "0")  # Procedure Record: a new order (ORC-1 NW)
    assert event(records["ORM-0002"]) == ("110111", "D", "0")  # ORC-1 CA: the order cancelled
    assert event(records["ORM-0003"])[2] == "4" and "PID-3" in description(records["ORM-0003"])
    (refused,) = [d for k, d in records.items() if k and k.startswith("not an HL7")]
    assert event(refused)[2] == "8"
    for doc in records.values():
        sender = participant(doc, "110153")
        assert sender.get("UserIsRequestor") == "true" and sender.get("NetworkAccessPointID") == "127.0.0.1"
        assert participant(doc, "110152").get("AlternativeUserID") == "AETITLES=AINODE"
    assert participant(records["ORM-0001"], "110153").get("UserID") == "RIS|GENHOSP"  # MSH-3|MSH-4 as sent
    (patient,) = objects(records["ORM-0001"], "2")  # PID-3 of the stored message, with its authority
    assert patient.get("ParticipantObjectID") == "PAT-0042^^^HOSP" and details(patient) == {"MSH-10": "ORM-0001"}
    assert patient.findtext("ParticipantObjectName") == "DOE^JANE^Q"
    assert objects(records["ORM-0003"], "2") == []  # refused: no patient kept, the message named by its MSH-10
    alerts = [(ev, doc) for ev, doc in msgs if ev["event"] == "tls-failure"]
    assert len(alerts) == 1 and alerts[0][0]["protocol"] == "MLLP"
    doc = alerts[0][1]
    assert event(doc) == ("110113", "E", "8") and codes(doc.find("EventIdentification"), "EventTypeCode") == ["110126"]
    assert [o.get("ParticipantObjectID") for o in objects(doc, "110182")] == ["127.0.0.1"]
    text = cfg.audit_path.read_text()
    assert "PAT-0042" not in text and "DOE" not in text, "the trail holds no patient identifiers"


# --- MPPS and IAN: Procedure Records ---------------------------------------------------------------------------------

def test_mpps_and_ian_are_procedure_records_and_a_refused_one_says_why(tmp_path: Path, data: Path) -> None:
    from node.dicom.scp import StorageSCP
    from node.flow.intake import Intake
    from node.store.spool import Spool
    from support.modality import ian, instance_refs, mpps_create, mpps_set
    from support.ports import free_port
    from support.studies import derive_cxr_study

    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var"), "port": free_port(), "host": "127.0.0.1",
                                 "accept_mpps": True, "accept_ian": True, "min_free_disk_mb": 0,
                                 "study_complete_after_seconds": 30}})
    store = Store.open(cfg.database_url)
    spool = Spool(cfg.storage_dir)
    spool.create()
    files = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                             patient_id="PAT-MPPS")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    store.record_instances([InstanceRecord(str(h.SOPInstanceUID), study, str(h.SeriesInstanceUID), str(h.SOPClassUID),
                                           str(h.file_meta.TransferSyntaxUID), str(f), 1, "MOD")
                            for f in files for h in [pydicom.dcmread(f, stop_before_pixels=True)]], quiet_seconds=30)
    scp = StorageSCP(cfg, store, spool, Intake(cfg, store, None))
    scp.start()
    uid = generate_uid()
    try:
        assert mpps_create(scp.port, uid, study) == 0x0000
        assert mpps_set(scp.port, uid, "COMPLETED", instance_refs(files)) == 0x0000
        assert mpps_set(scp.port, generate_uid(), "COMPLETED", []) == 0x0112
        assert ian(scp.port, study, instance_refs(files)) == 0x0000
    finally:
        scp.stop(1)
    msgs = [(ev, doc) for ev, doc in atna(cfg.audit_path, store.engine, tmp_path)
            if ev["event"] in ("mpps-received", "ian-received")]
    assert [(ev["event"], event(doc)) for ev, doc in msgs] == [
        ("mpps-received", ("110111", "C", "0")), ("mpps-received", ("110111", "U", "0")),
        ("mpps-received", ("110111", "U", "4")), ("ian-received", ("110111", "U", "0"))]
    for ev, doc in msgs:
        src = participant(doc, "110153")
        assert src.get("UserIsRequestor") == "true" and src.get("NetworkAccessPointID") == "127.0.0.1"
        assert participant(doc, "110152").get("AlternativeUserID") == "AETITLES=AINODE"
    created, completed, refused, available = (doc for _, doc in msgs)
    assert participant(created, "110153").get("AlternativeUserID") == "AETITLES=MODALITY"
    for doc in (created, completed):
        (s,) = objects(doc, "110180")
        assert s.get("ParticipantObjectID") == study and details(s) == {"MPPS UID": uid}
        assert [o.get("ParticipantObjectID") for o in objects(doc, "2")] == ["PAT-MPPS"]
    assert "COMPLETED" in description(completed)
    assert "0x0112" in description(refused) and objects(refused, "2") == []
    assert participant(available, "110153").get("AlternativeUserID") == "AETITLES=PACS"


# --- AIW-I workitems: Procedure Records, and the worklist search a Query ------------------------------------------

def test_workitem_claims_and_their_end_are_procedure_records_at_the_worklist(tmp_path: Path, data: Path) -> None:
    from node.emulator.ups_rs import UpsRsEmulator
    from node.store.spool import Spool
    from node.ups.performer import TaskPerformer
    from support.studies import derive_cxr_study
    from support.worklist import TASK_CODE, TASK_SCHEME, create, workitem

    files = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    with UpsRsEmulator() as ups:
        cfg = parse_config({
            "node": {"storage_dir": str(tmp_path / "var"), "instance_id": "node1"},
            "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
            "rules": [{"name": "chest", "endpoint": "cxr"}],
            "sources": [{"type": "ups-rs", "name": "worklist", "url": ups.url,
                         "workitems": [{"code": TASK_CODE, "scheme": TASK_SCHEME, "rule": "chest"}]}]})
        store = Store.open(cfg.database_url)
        spool = Spool(cfg.storage_dir)
        spool.create()
        uids = [generate_uid(), generate_uid()]
        for uid in uids:
            assert create(ups.url, workitem(uid, files, None)).status_code == 201
        performer = TaskPerformer(cfg, cfg.sources[0], store, spool, None, lambda job_id: None)
        try:
            assert performer.search_and_claim() == 2
            done, dropped = (store.workitem(u) for u in uids)
            performer.complete(done)
            store.update_workitem(uids[1], performer.owner, reason="inputs do not match the rule")
            performer.cancel(store.workitem(uids[1]))
        finally:
            performer.client.close()
        states = {u: str(ups.worklist.items[u].ds.ProcedureStepState) for u in uids}
    assert states == {uids[0]: "COMPLETED", uids[1]: "CANCELED"}  # as the worklist holds them
    msgs = [(ev, doc) for ev, doc in atna(cfg.audit_path, store.engine, tmp_path) if ev["event"].startswith("workitem")]
    assert sorted(ev["event"] for ev, _ in msgs) == ["workitem-canceled", "workitem-claimed", "workitem-claimed",
                                                     "workitem-completed", "workitem-query"]
    for ev, doc in msgs:
        worklist = participant(doc, "110152")
        assert worklist.get("UserID") == ups.url.rstrip("/") and participant(doc, "110153").get("UserID") == "node1"
        assert participant(doc, "110153").get("UserIsRequestor") == "true"
        if ev["event"] == "workitem-query":
            assert event(doc) == ("110112", "E", "0")
            (q,) = objects(doc, "110181")
            assert base64.b64decode(q.findtext("ParticipantObjectQuery")).decode() == \
                "/workitems?ProcedureStepState=SCHEDULED"
            continue
        assert event(doc) == ("110111", "U", "0")
        (item,) = objects(doc, "12")
        assert item.get("ParticipantObjectID") == f"{ups.url.rstrip('/')}/workitems/{ev['workitem_uid']}"
        assert item.get("ParticipantObjectTypeCodeRole") == "20"
    canceled = next(doc for ev, doc in msgs if ev["event"] == "workitem-canceled")
    assert "inputs do not match the rule" in description(canceled)
