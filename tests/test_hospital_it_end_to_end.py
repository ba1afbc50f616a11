"""Hospital IT end to end: a real ``dicom-node serve`` with a RIS (hl7apy's MLLPServer) and an EHR (the validating
FHIR receiver), orders sent to its MLLP listener with python-hl7's client.

One node serves the main case: an order, then a chest X-ray (CXRReportGen and a MedImageInsight classification) and
a CT (MedImageParse 3D); each job result reaches the RIS as one valid ORU and the EHR as one valid Bundle, counted
there; CXRReportGen's request (the emulator's log) carries the order's indication; a re-run is a correction and a
retraction withdraws, in both. A second node shows AE, AR and SIGKILL during an ORU send and during a FHIR
transaction, as docs/hospital-it.md states them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from support.fhir_receiver import FhirReceiver
from support.mllp_client import msa_code, send_mllp
from support.nodekit import send, status_json, wait_until
from support.nodeproc import EMULATED_CXR_VERSION, NodeProcess, node_config
from support.ports import free_port
from support.ris import Ris, field_of, obx_rows
from support.studies import derive_cxr_study

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data" / "hl7"
LABELS = ["x-ray chest posteroanterior", "x-ray chest anteroposterior", "x-ray chest lateral"]
ORDER_REASON = "Persistent cough and fever for three weeks"
ORDER_HISTORY = "Smoker, 40 pack-years"


def hospital_config(tmp: Path, emulator, ris: Ris, ehr: FhirReceiver, mllp_port: int, *, ct: bool = True) -> dict:
    base = emulator.url.rstrip("/").rsplit("/score", 1)[0]
    cfg = node_config(tmp, endpoint_url=emulator.url, pacs=None, quiet=1.0)
    cfg["endpoints"]["insight"] = {"model": "medimageinsight", "url": emulator.model_url("medimageinsight"),
                                   "auth": "none", "timeout_seconds": 30,
                                   "model_version": "MedImageInsight:emulator-1"}
    cfg["endpoints"]["parse3d"] = {"model": "medimageparse3d", "url": f"{base}/medimageparse3d/score",
                                   "auth": "none", "timeout_seconds": 120,
                                   "model_version": "MedImageParse3D:emulator-1"}
    retry = {"backoff_initial_seconds": 0.3, "backoff_max_seconds": 1.0, "timeout_seconds": 10}
    cfg["destinations"] = {
        "ris": {"type": "hl7v2", "host": "127.0.0.1", "port": ris.port, "receiving_application": "TEST_RIS",
                "sending_facility": "RADIOLOGY", **retry},
        "ehr": {"type": "fhir", "url": ehr.url, "patient_identifier_system": "urn:oid:1.2.3.4.5", **retry},
    }
    cfg["rules"] = [
        {"name": "chest-xray", "match": {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST*"},
         "endpoint": "cxr", "send_to": ["ris", "ehr"]},
        {"name": "view", "match": {"Modality": ["CR", "DX"]}, "endpoint": "insight", "send_to": ["ris", "ehr"],
         "params": {"labels": {"view": LABELS}, "resize": 512, "max_rows": 1}},
    ]
    if ct:
        cfg["rules"].append({"name": "liver-ct", "match": {"Modality": "CT"}, "endpoint": "parse3d",
                             "params": {"prompt": "liver"}, "send_to": ["ris", "ehr"]})
    cfg["mllp"] = {"host": "127.0.0.1", "port": mllp_port}
    return cfg


def cxr_study(tmp: Path, data: Path, accession: str, patient: str = "PAT-0042") -> list[Path]:
    paths = derive_cxr_study(tmp, data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=patient)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.AccessionNumber = accession
        ds.save_as(p, enforce_file_format=True)
    return paths


def send_order(port: int, accession: str, control_id: str, patient: str = "PAT-0042") -> str:
    """An ORM^O01 from tests/data/hl7 for ``accession``; returns MSA-1 (python-hl7's own MLLP client)."""
    raw = (DATA / "orm_o01.hl7").read_bytes().replace(b"ACC-ORM-1", accession.encode())
    raw = raw.replace(b"ORM-0001", control_id.encode()).replace(b"PAT-0042", patient.encode())
    return msa_code(send_mllp(port, raw)[0])


def wait_listening(port: int, node: NodeProcess) -> None:
    import socket

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False
    wait_until(up, 60, f"the MLLP listener on {port}:\n{node.logs()[-2000:]}")


def cli(node: NodeProcess, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def sr_sentences(path: Path) -> list[str]:
    """Every TEXT value of an SR, in document order (read here, not by node/reports)."""
    out: list[str] = []

    def walk(items) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                out.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))
    walk(pydicom.dcmread(path).ContentSequence)
    return out


def by_rule(ris: Ris, cxr_accession: str) -> dict[str, list]:
    out: dict[str, list] = {"cxr": [], "view": [], "ct": []}
    for rec in ris.received:
        codes = {r["code"] for r in obx_rows(rec)}
        algo = next(r["values"][0] for r in obx_rows(rec) if r["code"] == "111001")
        key = {"CXRReportGen": "cxr", "MedImageInsight": "view", "MedImageParse 3D": "ct"}[algo]
        out[key].append(rec)
        assert "113014" in codes
    return out


def test_results_reach_the_ris_and_the_ehr(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    accession = "ACC-E2E-7"
    study = cxr_study(tmp_path / "cxr", data, accession)
    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    ct = sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[:20]
    mllp_port = free_port()
    with EmulatorServer("127.0.0.1", 0) as emulator, Ris() as ris, FhirReceiver() as ehr:
        node = NodeProcess(tmp_path, hospital_config(tmp_path, emulator, ris, ehr, mllp_port))
        node.start()
        try:
            wait_listening(mllp_port, node)
            assert send_order(mllp_port, accession, "ORD-1") == "AA"  # the order comes before the study
            send(node, study)
            send(node, ct)
            ris.wait_for(3, timeout=180)
            ehr.wait_for(lambda e: len(e.resources("DiagnosticReport")) == 3, 120, "three DiagnosticReports")
            time.sleep(2)  # anything sent twice would be here by now
            assert len(ris.received) == 3 and len(ehr.bundles) == 3, [r.control_id for r in ris.received]
            for rec in ris.received:
                assert rec.strict_error is None and rec.python_hl7_error is None, rec.strict_error
                assert field_of(rec, "OBR", 25) == "P" and {r["status"] for r in obx_rows(rec)} == {"P"}
            assert ehr.invalid == []
            groups = by_rule(ris, accession)
            assert {k: len(v) for k, v in groups.items()} == {"cxr": 1, "view": 1, "ct": 1}
            cxr = groups["cxr"][0]
            assert field_of(cxr, "OBR", 18) == accession and field_of(cxr, "PID", 3).startswith("PAT-0042")
            assert field_of(cxr, "ORC", 2) == "PLC-1001" and field_of(cxr, "ORC", 3) == "FIL-2002"  # from the order
            assert field_of(cxr, "MSH", 4) == "RADIOLOGY" and field_of(cxr, "MSH", 5) == "TEST_RIS"
            # the emulator, like Azure, reports no model version: each endpoint's model_version names the algorithm
            want = {"cxr": EMULATED_CXR_VERSION, "view": "MedImageInsight:emulator-1",
                    "ct": "MedImageParse3D:emulator-1"}
            told_versions = {k: [r["values"][0] for r in obx_rows(v[0]) if r["code"] == "111003"]
                             for k, v in groups.items()}
            assert told_versions == {k: [v] for k, v in want.items()}, told_versions
            assert sorted(d["version"][0]["value"] for d in ehr.resources("Device")) == sorted(want.values())

            # the RIS says what the PACS gets: the SR the node wrote holds the same sentences
            headers = {p: pydicom.dcmread(p, stop_before_pixels=True)
                       for p in (tmp_path / "var" / "results" / str(frontal.StudyInstanceUID)).glob("*.dcm")}
            sr_paths = [p for p, h in headers.items()
                        if h.Modality == "SR" and h.SeriesDescription.startswith("AI findings")]
            told = [r["values"][0] for r in obx_rows(cxr) if r["code"] == "18782-3"]
            assert told and set(told) <= set(sr_sentences(sr_paths[0]))
            ehr_texts = sorted(o["valueCodeableConcept"]["text"] for o in ehr.resources("Observation")
                               if o["code"]["coding"][0]["code"] == "121071")
            assert ehr_texts == sorted(told)

            # CXRReportGen's indication came from the order (the emulator logs a digest of each text input)
            calls = [r for r in emulator.requests if r.get("status") == 200 and "indication" in (r["columns"] or [])
                     and "frontal_image" in r["columns"]]
            want = hashlib.sha256(f"{ORDER_REASON}. {ORDER_HISTORY}.".encode()).hexdigest()
            assert calls and calls[0]["digests"]["indication"] == want
            ruletest = json.loads(cli(node, "rules", "test", "--json", str(study[0]), str(study[1])))
            job = next(j for s in ruletest["studies"] for j in s["jobs"] if j["rule"] == "chest-xray")
            assert job["selection"]["indication"]["source"] == "order"

            # re-run: a correction at both; retract: withdrawn at both
            cli(node, "rerun", "--study", str(frontal.StudyInstanceUID), "--rule", "chest-xray")
            ris.wait_for(4, timeout=120)
            corrected = ris.received[3]
            assert field_of(corrected, "OBR", 25) == "C" and {r["status"] for r in obx_rows(corrected)} == {"C"}
            assert corrected.control_id != cxr.control_id
            ehr.wait_for(lambda e: any(d["status"] == "corrected" for d in e.resources("DiagnosticReport")), 60,
                         "the corrected DiagnosticReport")
            cli(node, "retract", "--study", str(frontal.StudyInstanceUID), "--rule", "chest-xray", "--reason", "safety")
            ris.wait_for(5, timeout=120)
            withdrawn = ris.received[4]
            assert field_of(withdrawn, "OBR", 25) == "C" and {r["status"] for r in obx_rows(withdrawn)} == {"W"}
            ehr.wait_for(lambda e: any(d["status"] == "entered-in-error" for d in e.resources("DiagnosticReport")),
                         60, "the withdrawn DiagnosticReport")
            time.sleep(1)
            assert len(ris.received) == 5 and len(ehr.resources("DiagnosticReport")) == 3
            assert all(r.strict_error is None for r in ris.received) and ehr.invalid == []
            assert status_json(node)["outbox"].get("delivered", 0) >= 10  # 5 ORUs and 5 Bundles, per the node
        finally:
            node.stop()
        for phi in ("PAT-0042", accession, ORDER_REASON):
            assert phi not in node.logs(), f"PHI {phi!r} in the node's log"


def test_ae_ar_and_sigkill_during_oru_and_fhir_sends(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    mllp_port = free_port()
    with EmulatorServer("127.0.0.1", 0) as emulator, Ris() as ris, FhirReceiver() as ehr:
        cfg = hospital_config(tmp_path, emulator, ris, ehr, mllp_port, ct=False)
        cfg["rules"] = cfg["rules"][:1]  # CXRReportGen only: one ORU and one Bundle per study
        for dest in cfg["destinations"].values():  # the node still waits for both answers when it is killed
            dest["timeout_seconds"] = 90
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            # AE: retried with backoff, the same message again; AR: parked with the RIS's words
            ris.script("AE")
            send(node, cxr_study(tmp_path / "s1", data, "ACC-AE"))
            got = ris.wait_for(2, timeout=120)
            assert [r.answer for r in got[:2]] == ["AE", "AA"] and got[0].raw == got[1].raw
            ris.script("AR")
            send(node, cxr_study(tmp_path / "s2", data, "ACC-AR"))
            ris.wait_for(3, timeout=120)
            parked = wait_until(lambda: [p for p in status_json(node)["parked"] if p["destination"] == "ris"], 60,
                                "the AR to be parked")
            assert parked[0]["last_status"] == "AR" and "scripted refusal" in parked[0]["error"]
            ehr.wait_for(lambda e: len(e.resources("DiagnosticReport")) == 2, 60, "two DiagnosticReports")

            # SIGKILL while the RIS holds the ORU and the EHR holds the transaction (both applied, unanswered)
            ris.script("slow:30")
            ehr.script("slow:30")
            send(node, cxr_study(tmp_path / "s3", data, "ACC-KILL"))
            ris.wait_for(4, timeout=120)
            ehr.wait_for(lambda e: len(e.resources("DiagnosticReport")) == 3, 60, "the third transaction applied")
            node.kill()
            node.start()
            got = ris.wait_for(5, timeout=120)
            ehr.wait_for(lambda e: len(e.posts) >= 4 and len(e.bundles) == 4, 120, "the resent transaction")
            time.sleep(2)
        finally:
            node.stop()
    assert got[3].control_id == got[4].control_id and got[3].raw == got[4].raw  # the ORU: at least once, same MSH-10
    assert len(ris.received) == 5
    assert len(ehr.resources("DiagnosticReport")) == 3  # the Bundle: sent twice, one report (idempotent)
    assert ehr.invalid == []
