"""A full run with distinctive patient data and a distinctive endpoint key: dcmtk storescu (plain and DICOM
TLS) -> dicom-node serve (a real process) -> emulator (demanding the key; one 500 first) -> a real Orthanc.
Every log the node wrote and its audit trail are searched for the PHI and the key; the audit trail must tell
who sent what and where the results went; every file under storage_dir must be owner-only."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dcmtk import storescu, transfer_syntax_flag
from node.config import load_config
from node.ops.audit import read_events
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.ports import free_port
from support.studies import derive_cxr_study
from support.tlscerts import make_pki

pytestmark = [pytest.mark.security, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]  # our own broken test file

NAME, PID, ACCESSION, BIRTH = "ZEPHYRINE^QUILLAMOND", "PHI-ID-93017", "ACC-PHI-48127", "19370412"
KEY = "sk-distinctive-endpoint-key-5f3a9c1e7b"


def _phi_study(tmp: Path, data: Path) -> list[Path]:
    study = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=PID, patient_name=NAME)
    for path in study:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber, ds.PatientBirthDate = ACCESSION, BIRTH
        ds.ReasonForTheRequestedProcedure = f"Dyspnoea. {NAME.replace('^', ' ')} MRN {PID} born 1937-04-12"
        ds.save_as(path, enforce_file_format=True)
    return study


def _broken_with_phi(tmp: Path, data: Path) -> Path:
    """An instance the node must quarantine (its StudyInstanceUID is not a UID), carrying the same PHI."""
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm")
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = NAME, PID, ACCESSION, BIRTH
    ds.StudyInstanceUID = f"1.2.{PID}"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = tmp / "broken.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_full_run_logs_no_phi_or_key_and_audits_everything(tmp_path: Path, data: Path, monkeypatch) -> None:
    from node.emulator.server import EmulatorServer

    pki = make_pki(tmp_path / "pki")
    study = _phi_study(tmp_path, data)
    broken = _broken_with_phi(tmp_path, data)
    burned = derive_cxr_study(tmp_path / "burned", data / "cxr" / "cr_pa_mono1_uncompressed.dcm", None,
                              patient_id=PID, patient_name=NAME)
    ds = pydicom.dcmread(burned[0])
    ds.BurnedInAnnotation = "YES"  # must not be sent: the rule does not say allow_burned_in
    ds.save_as(burned[0], enforce_file_format=True)
    monkeypatch.setenv("SEC_TEST_ENDPOINT_KEY", KEY)  # the node process inherits it
    with EmulatorServer("127.0.0.1", 0, key=KEY) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        emulator.script_faults([{"status": 500}])
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port))
        cfg["endpoints"]["cxr"].update({"auth": "key", "key_env": "SEC_TEST_ENDPOINT_KEY"})
        cfg["node"]["tls"] = {"port": free_port(), "cert_file": str(pki.server.cert),
                              "key_file": str(pki.server.key), "ca_file": str(pki.ca.cert)}
        cfg["node"]["allowed_hosts"] = {"MODALITY": ["127.0.0.1"]}
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            tls = storescu("127.0.0.1", cfg["node"]["tls"]["port"], [study[0]], calling_ae="MODALITY",
                           extra=["+tls", str(pki.client.key), str(pki.client.cert), "+cf", str(pki.ca.cert),
                                  transfer_syntax_flag(study[0])])
            assert tls.returncode == 0, tls.stdout + tls.stderr
            plain = storescu("127.0.0.1", node.port, [study[1]], calling_ae="MODALITY",
                             extra=[transfer_syntax_flag(study[1])])
            assert plain.returncode == 0, plain.stdout + plain.stderr
            storescu("127.0.0.1", node.port, [broken], calling_ae="MODALITY", extra=["-x="])
            assert storescu("127.0.0.1", node.port, burned, calling_ae="MODALITY", extra=["-x="]).returncode == 0
            got = pacs.wait_for_instances(2, timeout=120)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "BurnedInAnnotation=YES" not in node.status():
                time.sleep(0.5)
            status = node.status()
            time.sleep(1)
            cstores = pacs.cstore_counts()  # counted at the PACS: Orthanc drops a second copy silently
        finally:
            node.stop()
        assert node.proc.returncode == 0
        assert {ds.Modality for ds in got} == {"SR", "PR"}
        assert sorted(cstores.values()) == [1, 1], cstores
        assert [r["status"] for r in emulator.requests] == [500, 200], "one retried failure, then the answer"
        assert "BurnedInAnnotation=YES" in status and "skipped" in status, status

    storage = tmp_path / "var"
    own = load_config(node.config_path).node_dir  # the node's own files: storage, or storage/nodes/<id> (PostgreSQL)
    audit_path = own / "audit.jsonl"
    events = read_events(audit_path)

    # 1. No PHI and no key in anything the node logged, nor in the audit trail.
    logs = node.logs()
    assert "job" in logs and "delivered result" in logs, "the logs were captured"
    texts = {"node logs": logs, "audit trail": audit_path.read_text()}
    texts.update({str(p): p.read_text(errors="replace") for p in tmp_path.rglob("*.log")})
    needles = [NAME, *NAME.split("^"), PID, ACCESSION, BIRTH, "1937-04-12", KEY, KEY[3:20]]
    for where, text in texts.items():
        for needle in needles:
            assert needle.lower() not in text.lower(), f"{needle!r} found in {where}"

    # 2. The audit trail: who sent what, what went to the model, where the results went.
    by = {}
    for e in events:
        by.setdefault(e["event"], []).append(e)
    frontal, lateral = (pydicom.dcmread(p, stop_before_pixels=True) for p in study)
    starts = by["association-start"]
    assert {(e["calling_ae"], e["peer_host"], e["tls"]) for e in starts} >= {
        ("MODALITY", "127.0.0.1", True), ("MODALITY", "127.0.0.1", False)}
    burned_ds = pydicom.dcmread(burned[0], stop_before_pixels=True)
    received = {e["sop_instance_uid"]: e["study_uid"] for e in by["instance-received"]}
    assert received == {frontal.SOPInstanceUID: frontal.StudyInstanceUID, lateral.SOPInstanceUID: frontal.StudyInstanceUID,
                        burned_ds.SOPInstanceUID: burned_ds.StudyInstanceUID}
    assert len(by["instance-quarantined"]) == 1 and by["instance-quarantined"][0]["outcome"] == 4
    assert sum(e["instances_received"] for e in by["association-end"]) == 3
    [request] = by["model-request"]  # the burned-in study sent nothing
    assert request["endpoint"] == "cxr" and request["study_uid"] == frontal.StudyInstanceUID
    assert request["endpoint_host"] == "127.0.0.1"
    sent = by["result-sent"]
    assert {e["sop_instance_uid"] for e in sent} == {ds.SOPInstanceUID for ds in got}
    assert all(e["destination"] == "pacs" and e["destination_ae"] == pacs.aet and e["status"] == "0x0000"
               for e in sent)
    assert all(e["event_id"]["scheme"] == "DCM" and e["event_id"]["code"] for e in events)

    # 3. Owner-only files and folders under storage_dir (spool, results, quarantine, databases, audit).
    loose = [f"{p} {stat.filemode(p.stat().st_mode)}" for p in [storage, *storage.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, loose
    assert (own / "queue.db").exists()
    assert (storage / "node.db").exists() or cfg.get("database"), "SQLite's file is checked unless on PostgreSQL"
