"""Monitoring end to end: one real ``dicom-node serve`` with the emulator, a PACS (dcmtk storescp), its MLLP listener
and its HTTP side; chest X-ray studies in, AI results out, the radiologists' reports in by all three doors (HL7
ORU^R01 before and after the study, a FHIR DiagnosticReport, a DICOM SR to the SCP), an in-place model update, and
the Monitoring page opened in headless Chromium.

What the AI says is scripted here (the emulator's reply bodies) and read back from the SRs the PACS received; what
the radiologist says is written here; the expected agreement counts are computed here from those two, never by the
node's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_out.common import quiet_person_name_warnings, source_header
from support.dcmtk import Storescp
from support.mllp_client import msa_code, send_mllp
from support.nodekit import db_rows, send, wait_until
from support.nodeproc import EMULATED_CXR_VERSION, NodeProcess, node_config
from support.ports import free_port
from support.studies import derive_cxr_study
from support.viewer import chromium, console, console_errors, screenshot

pytestmark = pytest.mark.slow
TOKEN = "monitoring-e2e-token-5b7e0c21"
#: the node's finding codes as SNOMED/RadLex publish them (read in the SRs the PACS received)
CODES = {"60046008": "pleural_effusion", "8186001": "cardiomegaly", "RID28530": "opacity", "36118008": "pneumothorax"}
ALL_FINDINGS = ("pneumothorax", "pleural_effusion", "cardiomegaly", "pulmonary_edema", "lung_consolidation",
                "atelectasis", "pneumonia", "pulmonary_emphysema", "nodule", "mass", "fracture_of_bone", "opacity")
BOX = [[0.55, 0.55, 0.95, 0.95]]
#: study -> (the AI's reply: sentences and boxes, the findings a reader sees in it)
AI = {"S1": ([["Small left pleural effusion.", BOX], ["No pneumothorax.", None]], {"pleural_effusion"}),
      "S2": ([["Mild cardiomegaly.", None], ["Right lower lobe opacity.", BOX]], {"cardiomegaly", "opacity"}),
      "S3": ([["No acute cardiopulmonary abnormality.", None]], set()),
      "S4": ([["Small left pleural effusion.", BOX]], {"pleural_effusion"})}
#: study -> (door, the radiologist's words, the labels a reader gives them)
RADIOLOGIST = {
    "S1": ("hl7", "Small left pleural effusion. No pneumothorax.",
           {"pleural_effusion": "present", "pneumothorax": "absent"}),
    "S2": ("fhir", "Heart size is normal. Right lower lobe opacity, likely atelectasis.",
           {"cardiomegaly": "absent", "opacity": "present", "atelectasis": "uncertain"}),
    "S3": ("dicom", "Small right pneumothorax.", {"pneumothorax": "present"}),
    "S4": ("hl7", "No pleural effusion.", {"pleural_effusion": "absent"}),
}


def expected_counts(studies: list[str]) -> dict[str, tuple[int, int, int, int, int]]:
    """(a, b, c, d, uncertain) per finding over ``studies``: radiologist = reference, not named = negative."""
    out = {}
    for f in ALL_FINDINGS:
        a = b = c = d = u = 0
        for s in studies:
            ai, rad = f in AI[s][1], RADIOLOGIST[s][2].get(f, "absent")
            if rad == "uncertain":
                u += 1
            elif ai and rad == "present":
                a += 1
            elif ai:
                b += 1
            elif rad == "present":
                c += 1
            else:
                d += 1
        out[f] = (a, b, c, d, u)
    return out


def oru(accession: str, control: str, text: str) -> bytes:
    obr = [""] * 26
    obr[1], obr[3], obr[4], obr[7], obr[18], obr[22], obr[24], obr[25] = (
        "1", f"F-{control}", "71020^XR CHEST 2 VIEWS^CPT", "20260301090000", accession, "20260301110000", "RAD", "F")
    return ("\r".join([
        f"MSH|^~\\&|REPORTING|GENHOSP|DICOM_AI_NODE|GENHOSP|20260301110000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|1||PAT-MON-1^^^HOSP^MR||MONITOR^PAT||19600101|F", "OBR|" + "|".join(obr[1:]),
        f"OBX|1|TX|18782-3^Radiology Study observation^LN||{text}||||||F"]) + "\r").encode()


def fhir_report(accession: str, study_uid: str, text: str) -> dict:
    return {"resourceType": "DiagnosticReport", "id": "rad-s2", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "36643-5"}]},
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                  "code": "ACSN"}]}, "value": accession}],
            "contained": [{"resourceType": "ImagingStudy", "id": "st", "status": "available",
                           "subject": {"display": "patient"},
                           "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}]}],
            "imagingStudy": [{"reference": "#st"}], "conclusion": text}


def radiologist_sr(frontal: pydicom.Dataset, text: str, path: Path) -> Path:
    """A verified Enhanced SR as a reporting system writes it (not the node: no Processing Algorithm)."""
    def concept(value: str, scheme: str, meaning: str) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)

    section = hd.sr.ContainerContentItem(name=concept("121070", "DCM", "Findings"), relationship_type="CONTAINS")
    section.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=concept("121071", "DCM", "Finding"), value=text, relationship_type="CONTAINS")])
    root = hd.sr.ContainerContentItem(name=concept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = hd.sr.ContentSequence([section])
    with quiet_person_name_warnings():
        sr = hd.sr.EnhancedSR(evidence=[source_header(frontal)], content=root, series_instance_uid=generate_uid(),
                              series_number=77, sop_instance_uid=generate_uid(), instance_number=1,
                              manufacturer="Reporting Co", is_complete=True, is_final=True, is_verified=True,
                              verifying_observer_name="Reader^Rita", verifying_organization="Test Hospital")
    sr.save_as(path, enforce_file_format=True)
    return path


def sr_of(pacs: Storescp, study_uid: str) -> pydicom.Dataset | None:
    for p in pacs.received():
        ds = pydicom.dcmread(p)
        if ds.StudyInstanceUID == study_uid and ds.Modality == "SR":
            return ds
    return None


def codes_and_version(sr: pydicom.Dataset) -> tuple[set[str], str]:
    """The findings the SR codes (CODE items named Finding, 121071) and its algorithm's version, read here."""
    found: set[str] = set()

    def walk(items) -> None:
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if item.get("ValueType") == "CODE" and name and name[0].CodeValue == "121071":
                code = str(item.ConceptCodeSequence[0].CodeValue)
                if code in CODES:
                    found.add(CODES[code])
            walk(item.get("ContentSequence", []))
    walk(sr.ContentSequence)
    version = next(str(i.SoftwareVersions) for i in sr.ContributingEquipmentSequence
                   if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1")
    return found, version


def test_reports_by_three_doors_agreement_on_the_page_and_a_version_change(tmp_path: Path, data: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from node.emulator.server import EmulatorServer

    monkeypatch.setenv("MONITORING_E2E_TOKEN", TOKEN)
    mllp_port, http_port = free_port(), free_port()
    studies = {}
    for i, name in enumerate(AI, start=1):
        paths = derive_cxr_study(tmp_path / name, data / "cxr" / "cr_pa_mono1_uncompressed.dcm", None,
                                 patient_id=f"PAT-MON-{i}", patient_name="MONITOR^PAT")
        ds = pydicom.dcmread(paths[0])
        ds.AccessionNumber = f"ACC-MON-{i}"
        ds.save_as(paths[0], enforce_file_format=True)
        studies[name] = (paths, str(ds.StudyInstanceUID), f"ACC-MON-{i}")
    with EmulatorServer("127.0.0.1", 0) as emulator, Storescp(tmp_path / "pacs") as pacs:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.ae_title, pacs.port), quiet=1.0)
        cfg["mllp"] = {"host": "127.0.0.1", "port": mllp_port}
        cfg["http"] = {"host": "127.0.0.1", "port": http_port, "token_env": "MONITORING_E2E_TOKEN"}
        cfg["monitoring"] = {"min_pairs": 1}
        node = NodeProcess(tmp_path, cfg)
        node.start()
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_until(lambda: _up(base), 60, "the HTTP side")
            # S1's report comes before its study (HL7, by accession number only)
            _, text, _ = RADIOLOGIST["S1"]
            assert msa_code(send_mllp(mllp_port, oru(studies["S1"][2], "RAD-1", text))[0]) == "AA"
            versions = {}
            for name, (reply, _) in AI.items():
                paths, study_uid, accession = studies[name]
                if name == "S4":  # an in-place model update: the operator names the new version, the node restarts
                    _restart_with_model_version(node, "CXRReportGen:emulator-2", base, mllp_port)
                emulator.script_faults([{"body": {"output": reply}}])
                send(node, paths)
                sr = wait_until(lambda: sr_of(pacs, study_uid), 120, f"the SR of {name} at the PACS")
                found, versions[name] = codes_and_version(sr)
                assert found == AI[name][1], (name, found)
            assert versions == {"S1": EMULATED_CXR_VERSION, "S2": EMULATED_CXR_VERSION, "S3": EMULATED_CXR_VERSION,
                                "S4": "CXRReportGen:emulator-2"}, versions  # endpoints.cxr.model_version, each time

            # S2 by FHIR, S3 by a DICOM SR to the SCP, S4 by HL7: all after their AI result
            _, text, _ = RADIOLOGIST["S2"]
            doc = fhir_report(studies["S2"][2], studies["S2"][1], text)
            assert httpx.post(f"{base}/fhir/DiagnosticReport", json=doc, timeout=30).status_code == 401
            answer = httpx.post(f"{base}/fhir/DiagnosticReport", json=doc, timeout=30,
                                headers={"Authorization": f"Bearer {TOKEN}"})
            assert answer.status_code == 200 and "matched" in answer.text, answer.text
            calls_before = len(emulator.requests)
            frontal = pydicom.dcmread(studies["S3"][0][0], stop_before_pixels=True)
            send(node, [radiologist_sr(frontal, RADIOLOGIST["S3"][1], tmp_path / "s3_report.dcm")])
            _, text, _ = RADIOLOGIST["S4"]
            assert msa_code(send_mllp(mllp_port, oru(studies["S4"][2], "RAD-4", text))[0]) == "AA"
            wait_until(lambda: db_rows(node, "SELECT count(*) FROM monitor_reports WHERE matched_at IS NOT NULL")
                       [0][0] == 4, 60, "four matched reports")
            wait_until(lambda: "only a radiologist's report came" in node.logs(), 30, "the SR study's re-decision")
            assert len(emulator.requests) == calls_before  # the report SR ran no model again
            assert db_rows(node, "SELECT count(*) FROM jobs WHERE study_uid = ?", studies["S3"][1])[0][0] == 1

            # the agreement the node shows, against the counts computed here
            shown = httpx.get(f"{base}/monitoring/data.json", timeout=60).json()
            rows = {(r["model_version"], r["item"]): r for r in shown["agreement"]
                    if r["by"] == "all" and r["window_days"] == 7}
            for version, names in ((versions["S1"], ["S1", "S2", "S3"]), (versions["S4"], ["S4"])):
                for finding, counts in expected_counts(names).items():
                    r = rows[(version, finding)]
                    assert (r["a"], r["b"], r["c"], r["d"], r["uncertain"]) == counts, (version, finding, r)
            _no_phi(node, studies)
            _page_in_chromium(base, versions["S1"], expected_counts(["S1", "S2", "S3"]))
        finally:
            node.stop()


def _restart_with_model_version(node: NodeProcess, version: str, base: str, mllp_port: int) -> None:
    """The documented way to label a new model: ``endpoints.<n>.model_version`` (the real endpoints report no
    version header), then a restart; waits until the HTTP side and the MLLP listener answer again."""
    import socket

    import yaml

    node.stop()
    node.config["endpoints"]["cxr"]["model_version"] = version
    node.config_path.write_text(yaml.safe_dump(node.config, sort_keys=False))
    node.start()
    node.wait_worker_started()

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", mllp_port), timeout=1):
                return True
        except OSError:
            return False
    wait_until(lambda: _up(base) and listening(), 60, "the HTTP side and the MLLP listener after the restart")


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _no_phi(node: NodeProcess, studies: dict) -> None:
    dump = json.dumps([db_rows(node, f"SELECT * FROM {t}") for t in ("monitor_reports", "monitor_observations",
                                                                      "monitor_calls")], default=str)
    for _, _, accession in studies.values():
        assert accession not in dump
    for phi in ("PAT-MON", "MONITOR", "19600101", "Small left pleural effusion"):
        assert phi not in dump, phi


def _page_in_chromium(base: str, version: str, counts: dict) -> None:
    driver = chromium(1400, 1800)
    try:
        driver.get(f"{base}/monitoring")
        wait_until(lambda: driver.execute_script("return window.monitoringCharts && "
                                                 "Object.keys(window.monitoringCharts).length"), 30, "the charts")
        errors = console_errors(console(driver))
        assert not errors, errors
        a, b, c, d, _ = counts["pleural_effusion"]
        series = f"cxrreportgen|{version}|pleural_effusion"
        shown = driver.execute_script(
            "var c = document.querySelector('canvas[data-series=\"' + arguments[0] + '\"]');"
            "var chart = window.monitoringCharts[c.id];"
            "var ds = chart.data.datasets.find(function (d) { return d.label === 'positive agreement'; });"
            "var i = chart.data.datasets.indexOf(ds), meta = chart.getDatasetMeta(i);"
            "var point = meta.data[meta.data.length - 1], r = window.devicePixelRatio || 1;"
            "var px = c.getContext('2d').getImageData(Math.round(point.x * r) - 6, Math.round(point.y * r) - 6,"
            " 13, 13).data, blue = 0;"
            "for (var k = 0; k < px.length; k += 4) { if (Math.abs(px[k] - 21) < 30 && Math.abs(px[k + 1] - 101) < 30"
            " && Math.abs(px[k + 2] - 192) < 30 && px[k + 3] > 200) blue++; }"
            "return {value: ds.data[ds.data.length - 1], blue: blue};", series)
        assert shown["value"] == pytest.approx(2 * a / (2 * a + b + c))
        assert shown["blue"] >= 8, shown  # the point was drawn where its value is, in its colour #1565c0
        cells = driver.execute_script(
            "var r = document.querySelector('tr.agreement-row[data-window=\"7\"][data-item=\"pleural_effusion\"]"
            "[data-version=\"' + arguments[0] + '\"][data-by=\"all\"]');"
            "return ['a', 'b', 'c', 'd'].map(function (k) { return r.querySelector('td.' + k).textContent; });",
            version)
        assert [int(x) for x in cells] == [a, b, c, d]
        screenshot(driver, "monitoring_page")
    finally:
        driver.quit()
