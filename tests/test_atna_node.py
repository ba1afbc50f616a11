"""A whole node (``dicom-node serve``) sending its audit trail to a real audit record repository (rsyslogd + gnutls,
mutual TLS): every kind of event the node produces reaches it as a schema-valid ATNA message (start, a refused
association, a failed TLS handshake, a quarantined instance, the study's transfer, the prior look-up's queries, the
export to the model, the results sent, a configuration change, an operator's retract from the command line, the
retention purge, stop), while the repository was down during the study and came back, and nothing was lost.

Expected values come from outside the node: the study's own files (patient, UIDs), the trail grouped by the test
itself, the OS user running the command, rsyslog's parse of what it received."""

from __future__ import annotations

import base64
import getpass
import socket
import ssl
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import yaml
from lxml import etree
from pydicom.filereader import read_dataset

from node.audit import schema
from node.config import load_config
from node.ops.audit import read_events
from support import rsyslog
from support.dcmtk import echoscu, storescu, transfer_syntax_flag
from support.nodekit import wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.ports import free_port
from support.studies import CURRENT_DATE, derive_cxr_study, make_prior_study
from support.tlscerts import make_pki

pytestmark = [pytest.mark.slow, pytest.mark.security]

FORWARDED = {"node-start", "node-stop", "config-changed", "association-rejected", "tls-failure",
             "instance-quarantined", "model-request", "job-failed", "job-parked", "result-sent", "result-parked",
             "prior-query", "prior-retrieved", "study-deleted", "action"}


def _doc(m: rsyslog.Received) -> etree._Element:
    return etree.fromstring(m.xml)


def _event_id(doc: etree._Element) -> str:
    return doc.find("EventIdentification/EventID").get("csd-code")


def _objects(doc: etree._Element, id_type: str) -> list[str]:
    return [o.get("ParticipantObjectID") for o in doc.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type]


def test_every_event_of_a_real_run_reaches_the_repository_as_a_valid_atna_message(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    pki = make_pki(tmp_path / "pki")
    prior = make_prior_study(tmp_path / "prior", data)
    study = derive_cxr_study(tmp_path / "current", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", study_date=CURRENT_DATE)
    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    broken = pydicom.dcmread(study[0])
    broken.StudyInstanceUID = "not-a-uid"
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    repo = rsyslog.start(tmp_path / "rsyslog", tls=True, mutual=True)
    try:
        with EmulatorServer("127.0.0.1", 0) as emulator:
            node_port = free_port()
            with Orthanc(tmp_path / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", node_port)}) as pacs:
                for f in prior.files:
                    pacs.upload(f)
                cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port),
                                  priors={"query": "pacs", "method": "c-get", "lookback_days": 1825,
                                          "timeout_seconds": 30},
                                  retention={"purge_delivered_after_hours": 0.003, "keep_failed_hours": 1},
                                  audit={"syslog": repo.syslog_config(alert_backlog=1000)})
                cfg["node"].update(port=node_port, allowed_calling_ae_titles=["STORESCU"], tls={
                    "port": free_port(), "cert_file": str(pki.server.cert), "key_file": str(pki.server.key),
                    "ca_file": str(pki.ca.cert)})
                node = NodeProcess(tmp_path, cfg)
                node.start()
                try:
                    assert echoscu("127.0.0.1", node.port, "AINODE", calling_ae="INTRUDER").returncode != 0
                    _rogue_tls_client(cfg["node"]["tls"]["port"], pki)
                    storescu("127.0.0.1", node.port, [tmp_path / "broken.dcm"], extra=["-x="])
                    repo.wait_for(1, where=lambda m: "110113" in m.msg and "Node Authentication" in m.msg)
                    repo.stop()  # the repository goes away while the study comes in and is processed
                    flags = {transfer_syntax_flag(f) for f in study}
                    sent = storescu("127.0.0.1", node.port, study, extra=sorted(flags))  # one association
                    assert sent.returncode == 0, sent.stdout + sent.stderr
                    pacs.wait_for_instances(len(prior.files) + 2, timeout=120)
                    wait_until(lambda: _events(node, "result-sent"), 60, "the results' audit events")
                    repo.start()
                    _change_config(node)
                    wait_until(lambda: _events(node, "config-changed"), 30, "the configuration change")
                    retract = subprocess.run([sys.executable, "-m", "node.cli", "retract", "--config",
                                              str(node.config_path), "--study", frontal.StudyInstanceUID,
                                              "--reason", "quality"], capture_output=True, text=True, timeout=120)
                    assert retract.returncode == 0, retract.stdout + retract.stderr
                    wait_until(lambda: {e["study_uid"] for e in _events(node, "study-deleted")} >= {
                        frontal.StudyInstanceUID, prior.study_uid}, 120, "the retention purge of both studies")
                finally:
                    node.stop()
        assert node.proc.returncode == 0
        own = load_config(node.config_path).node_dir
        trail = read_events(own / "audit.jsonl")
        # the node's own copy and its logs hold no patient identifier (the repository's messages do, below)
        for where, text in (("audit trail", (own / "audit.jsonl").read_text()), ("node logs", node.logs())):
            for phi in (str(frontal.PatientID), str(frontal.PatientName)):
                assert phi not in text, f"{phi!r} in the {where}"
        loose = [p for p in [own / "atna", *(own / "atna").rglob("*")] if p.stat().st_mode & 0o077]
        assert not loose, f"ATNA files readable by others: {loose}"
        expected = _expected_messages(trail)
        got = repo.wait_for(expected, timeout=60)
    finally:
        repo.stop()

    # Every message arrived once, rsyslog parsed it as RFC 5424 (facility 10, IHE's MSGID), and it is valid.
    assert len(got) == expected, (len(got), expected)
    docs = []
    for m in got:
        assert (m.version, m.facility, m.msgid) == ("1", 10, "IHE+RFC-3881"), m.raw[:200]
        assert m.severity in (4, 5) and m.hostname == socket.gethostname()
        assert schema.errors(m.xml) == [], m.xml[:300]
        docs.append(_doc(m))
    ids = [_event_id(d) for d in docs]
    assert ids[0] == "110100" and ids[-1] == "110100"  # the node's start first, its stop last
    assert {"110100", "110113", "110104", "110112", "110106", "110103", "110105"} <= set(ids), ids

    # The study came in on one association: one Instances Transferred for it, both instances, its patient
    incoming = [d for d in docs if _event_id(d) == "110104" and frontal.StudyInstanceUID in _objects(d, "110180")
                and d.find("EventIdentification").get("EventActionCode") == "C"]
    assert len(incoming) == 1
    assert sorted(i.get("UID") for i in incoming[0].iter("Instance")) == sorted(
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study)
    assert _objects(incoming[0], "2") == [str(frontal.PatientID)]
    # the prior look-up's C-FINDs: the query as sent, with the patient's ID the study's file holds
    queries = [d for d in docs if _event_id(d) == "110112"]
    study_level = [read_dataset(BytesIO(base64.b64decode(d.findtext(
        "ParticipantObjectIdentification/ParticipantObjectQuery"))), True, True) for d in queries]
    study_level = [q for q in study_level if q.QueryRetrieveLevel == "STUDY"]
    assert len(study_level) == 1 and study_level[0].PatientID == frontal.PatientID
    # the prior study retrieved by C-GET: the PACS the source, its instances, the same patient
    [retrieved] = [d for d in docs if _event_id(d) == "110104" and prior.study_uid in _objects(d, "110180")]
    assert _objects(retrieved, "2") == [frontal.PatientID]
    assert {i.get("UID") for i in retrieved.iter("Instance")} <= {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in prior.files}
    # the export to the model and the results sent to the PACS, for this study
    [export] = [d for d in docs if _event_id(d) == "110106"]
    assert _objects(export, "110180") == [frontal.StudyInstanceUID] and _objects(export, "2") == [frontal.PatientID]
    outgoing = [d for d in docs if _event_id(d) == "110104"
                and d.find("EventIdentification").get("EventActionCode") == "R"]
    assert len(outgoing) == 3  # SR, GSPS, then the retract's rejection note
    # the operator's retract, by the OS user who ran it; the configuration change; the purge of both studies
    [action] = [d for d in docs if _event_id(d) == "110103"]
    assert action.find("EventIdentification").get("EventActionCode") == "D"
    assert getpass.getuser() in {p.get("UserID") for p in action.findall("ActiveParticipant")}
    alerts = [[c.get("csd-code") for c in d.iter("EventTypeCode")] for d in docs if _event_id(d) == "110113"]
    assert sorted(alerts) == sorted([["110126"], ["110126"], ["110131"]]), alerts
    deleted = {_objects(d, "110180")[0]: _objects(d, "2") for d in docs if _event_id(d) == "110105"}
    assert deleted == {frontal.StudyInstanceUID: [frontal.PatientID], prior.study_uid: [frontal.PatientID]}


def _events(node: NodeProcess, name: str) -> list[dict]:
    return [e for e in read_events(load_config(node.config_path).audit_path) if e["event"] == name]


def _expected_messages(trail: list[dict]) -> int:
    """Messages the trail calls for, counted here: one per forwarded event, one per study per association."""
    transfers = {(e["pid"], e["peer_host"], e["peer_port"], e["study_uid"]) for e in trail
                 if e["event"] == "instance-received"}
    return len(transfers) + sum(e["event"] in FORWARDED for e in trail)


def _rogue_tls_client(port: int, pki) -> None:
    """A client whose certificate the node's CA did not sign: the handshake fails (a tls-failure event)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(pki.rogue_client.cert), str(pki.rogue_client.key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass


def _change_config(node: NodeProcess) -> None:
    cfg = yaml.safe_load(node.config_path.read_text())
    cfg["retention"]["keep_failed_hours"] = 2  # an edit while the node runs (it takes effect at the next start)
    node.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
