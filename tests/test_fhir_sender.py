"""The fhir Sender against a test EHR that validates every Bundle with two R4 validators (fhirclient, npm fhir)
and applies it with the FHIR spec's transaction semantics (tests/support/fhir_receiver.py).

Counts are made in the receiver's store: one Patient, order, study, device and DiagnosticReport per study and rule,
one Observation per finding/image/segment, however often the Bundle is sent; statuses follow re-runs and
retractions; each HTTP answer of the sender's table leads to its verdict.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from dicom_out.sr import GroundedFinding
from node.config import parse_config
from node.dicom.scu import OutgoingFile
from node.fhir.bundle import build_bundle
from node.fhir.sender import default_scope, send_fhir
from node.reports.job import build_report, retraction_of
from node.reports.read import read_results
from support import reports
from support.fhir_receiver import FhirReceiver

pytestmark = pytest.mark.nodb

JOB = {"id": 1, "job_uid": "c" * 32, "study_uid": "1.2.3", "rule_name": "chest", "study_version": 1}


def dest(url: str, **keys):
    return parse_config({"destinations": {"ehr": {"type": "fhir", "url": url, "timeout_seconds": 10,
                                                  **keys}}}).destinations["ehr"]


def stored(tmp: Path, report) -> OutgoingFile:
    path = tmp / f"{report.uid}.json"
    path.write_bytes(report.to_json())
    return OutgoingFile(key=hash(report.uid) % 10**6, path=path, sop_class_uid="")


def send(ehr: FhirReceiver, tmp: Path, report, **keys):
    f = stored(tmp, report)
    return send_fhir(dest(ehr.url, **keys), "AINODE", [f])[f.key]


def counts(ehr: FhirReceiver) -> dict[str, int]:
    return {t: len(ehr.resources(t)) for t in ("Patient", "ServiceRequest", "ImagingStudy", "Device",
                                                "DiagnosticReport", "Observation", "Provenance")}


@pytest.mark.parametrize("kind,observations", [("cxr_report", len(reports.FINDINGS)), ("classification", 2),
                                               ("ct_segmentation", len(reports.SEGMENTS))])
def test_each_result_kind_is_one_valid_transaction(tmp_path: Path, data: Path, kind: str, observations: int) -> None:
    made = getattr(reports, kind)(data)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    with FhirReceiver() as ehr:
        out = send(ehr, tmp_path, report, patient_identifier_system="urn:oid:1.2.3.99")
        again = send(ehr, tmp_path, report, patient_identifier_system="urn:oid:1.2.3.99")  # a resend
        assert ehr.invalid == []
        assert (out.verdict, again.verdict) == ("delivered", "delivered")
        n = counts(ehr)
        has_order = 1 if made.source.get("AccessionNumber") else 0
        assert n == {"Patient": 1, "ServiceRequest": has_order, "ImagingStudy": 1, "Device": 1,
                     "DiagnosticReport": 1, "Observation": observations, "Provenance": 1}
        dr = ehr.resources("DiagnosticReport")[0]
        patient = ehr.resources("Patient")[0]
        study = ehr.resources("ImagingStudy")[0]
        assert patient["identifier"][0] == {"system": "urn:oid:1.2.3.99", "value": str(made.source.PatientID)}
        assert {"system": "urn:dicom:uid", "value": f"urn:oid:{made.source.StudyInstanceUID}"} in study["identifier"]
        assert dr["status"] == "preliminary" and dr["meta"]["versionId"] == "2"
        assert dr["subject"]["reference"] == f"Patient/{patient['id']}"
        assert dr["imagingStudy"][0]["reference"] == f"ImagingStudy/{study['id']}"
        assert "performer" not in dr
        assert dr["category"][0]["coding"][0]["code"] == "RAD" and dr["code"]["coding"][0]["system"] == "http://loinc.org"
        obs_ids = {f"Observation/{o['id']}" for o in ehr.resources("Observation")}
        assert {r["reference"] for r in dr["result"]} == obs_ids
        for res in [dr, *ehr.resources("Observation")]:
            assert res["meta"]["security"][0]["code"] == "AIAST"
        device = ehr.resources("Device")[0]
        for o in ehr.resources("Observation"):
            assert o["device"]["reference"] == f"Device/{device['id']}"
            assert o["derivedFrom"][0]["reference"] == f"ImagingStudy/{study['id']}"
        prov = ehr.resources("Provenance")[0]
        assert prov["agent"][0]["who"]["reference"] == f"Device/{device['id']}"
        if kind == "cxr_report":
            texts = sorted(o["valueCodeableConcept"]["text"] for o in ehr.resources("Observation"))
            assert texts == sorted(f.text for f in reports.FINDINGS)
            order = ehr.resources("ServiceRequest")[0]
            assert order["identifier"][0]["type"]["coding"][0]["code"] == "ACSN"
            assert order["identifier"][0]["value"] == "ACC-7781"
            assert dr["basedOn"][0]["reference"] == f"ServiceRequest/{order['id']}"


def test_rerun_corrects_and_retract_withdraws(tmp_path: Path, data: Path) -> None:
    made = reports.cxr_report(data)
    first = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    changed = reports.cxr_report(data, findings=reports.FINDINGS[:2] + (GroundedFinding("Small nodule.", ()),))
    second = build_report(job={**JOB, "job_uid": "d" * 32, "study_version": 2},
                          content=read_results(changed.results, changed.source), previous=first)
    with FhirReceiver() as ehr:
        assert send(ehr, tmp_path, first).verdict == "delivered"
        assert send(ehr, tmp_path, second).verdict == "delivered"
        assert ehr.invalid == []
        drs = ehr.resources("DiagnosticReport")
        assert len(drs) == 1 and drs[0]["status"] == "corrected"
        by_text = {o["valueCodeableConcept"]["text"]: o["status"] for o in ehr.resources("Observation")}
        assert by_text == {reports.FINDINGS[0].text: "corrected", reports.FINDINGS[1].text: "corrected",
                           "Small nodule.": "corrected", reports.FINDINGS[2].text: "entered-in-error",
                           reports.FINDINGS[3].text: "entered-in-error"}
        assert {r["reference"] for r in drs[0]["result"]} == {
            f"Observation/{o['id']}" for o in ehr.resources("Observation") if o["status"] == "corrected"}
        assert send(ehr, tmp_path, retraction_of(second, "safety")).verdict == "delivered"
        assert ehr.resources("DiagnosticReport")[0]["status"] == "entered-in-error"
        assert {o["status"] for o in ehr.resources("Observation")} == {"entered-in-error"}
        assert len(ehr.resources("Provenance")) == 3


def test_http_answers_and_a_lost_answer(tmp_path: Path, data: Path) -> None:
    made = reports.ct_segmentation(data)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    with FhirReceiver() as ehr:
        ehr.script("500", "429", "401", "400", "drop")
        verdicts = [send(ehr, tmp_path, report) for _ in range(5)]
        assert [(v.verdict, v.status) for v in verdicts[:4]] == [
            ("retry", "http-500"), ("retry", "http-429"), ("retry_limited", "http-401"), ("park", "http-400")]
        assert "scripted 400" in verdicts[3].reason
        assert verdicts[4].verdict == "retry" and verdicts[4].unseen  # applied, answer lost
        assert len(ehr.resources("DiagnosticReport")) == 1
        assert send(ehr, tmp_path, report).verdict == "delivered"  # the resend after the lost answer
        assert counts(ehr)["DiagnosticReport"] == 1 and counts(ehr)["Observation"] == len(reports.SEGMENTS)


def test_the_receiver_refuses_what_r4_refuses(tmp_path: Path, data: Path) -> None:
    """The validators are live: a Device as performer (R4 forbids it) and an unknown element are refused."""
    made = reports.ct_segmentation(data)
    report = build_report(job=JOB, content=read_results(made.results, made.source), previous=None)
    bundle = build_bundle(report, None)
    bad = copy.deepcopy(bundle)
    dr = next(e["resource"] for e in bad["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    dr["performer"] = [{"reference": "Device/the-model"}]  # (fhir.js cannot type an urn:uuid reference)
    with FhirReceiver() as ehr:
        from support.fhir_receiver import validate

        assert validate(bundle, ehr.js) == []
        assert any("performer" in e for e in validate(bad, ehr.js))
        dr.pop("performer")
        dr["aiModel"] = "x"
        assert any("aiModel" in e for e in validate(bad, ehr.js))


def test_entra_scope_defaults_to_the_fhir_service() -> None:
    assert default_scope("https://ws-fhirsvc.fhir.azurehealthcareapis.com/") == \
        "https://ws-fhirsvc.fhir.azurehealthcareapis.com/.default"
