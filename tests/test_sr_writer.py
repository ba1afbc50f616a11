"""The CXRReportGen findings SR: valid (dciodvfy), and what it says can be read back exactly.

The lateral view is the only real lateral available (a dog's thorax); as the data README says, the test gives it
the frontal's patient and study. The prior study is derived from the frontal (new UIDs, earlier StudyDate).
"""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_out.algorithm import NODE_MANUFACTURER, AlgorithmInfo
from dicom_out.sr import NO_FINDINGS_TEXT, GroundedFinding, build_findings_sr, finding_tracking_uid
from support.validate import assert_valid_dicom, assert_valid_sr_template

MONO1 = "cxr/cr_pa_mono1_uncompressed.dcm"
JPEG = "cxr/cr_pa_jpeg_baseline.dcm"
LATERAL = "cxr/dx_lateral_thorax_veterinary.dcm"

PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDate",
    "StudyTime", "AccessionNumber", "ReferringPhysicianName",
)

REAL = AlgorithmInfo(name="CXRReportGen", version="cxr-report-gen-1")
EMULATED = AlgorithmInfo(name="CXRReportGen", version="emulator-0.1", emulated=True)

FINDINGS = (
    GroundedFinding("Cardiomegaly is present.", ((100.5, 200.25, 400.0, 600.75),)),
    GroundedFinding("Bilateral pleural effusions.", ((10.0, 20.0, 30.5, 40.5), (1000.0, 1100.0, 1500.25, 1800.0))),
    GroundedFinding("No pneumothorax.", ()),
)


def read(data: Path, name: str) -> pydicom.Dataset:
    return pydicom.dcmread(data / name, stop_before_pixels=True)


def lateral_for(frontal: pydicom.Dataset, data: Path) -> pydicom.Dataset:
    lat = read(data, LATERAL)
    for kw in PATIENT_STUDY:
        if kw in frontal:
            setattr(lat, kw, frontal[kw].value)
    lat.ViewPosition = "LL"
    return lat


def prior_of(frontal: pydicom.Dataset) -> pydicom.Dataset:
    """The same image as an earlier study of the same patient (new UIDs, earlier date)."""
    prior = copy.deepcopy(frontal)
    prior.StudyInstanceUID = generate_uid()
    prior.SeriesInstanceUID = generate_uid()
    prior.SOPInstanceUID = generate_uid()
    prior.StudyDate = "20030101"
    return prior


def expected_points(box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def write_and_check(ds: pydicom.Dataset, path: Path, template: bool = False) -> hd.sr.ComprehensiveSR:
    """dciodvfy always; PixelMed's TID 1500 validator (slow: a JVM per file) where ``template``."""
    ds.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    if template:
        assert_valid_sr_template(path)
    return hd.sr.srread(path)


def build(frontal, evidence, findings, algorithm=REAL, **kw) -> pydicom.Dataset:
    return build_findings_sr(
        frontal=frontal,
        evidence=evidence,
        findings=findings,
        algorithm=algorithm,
        series_instance_uid=kw.pop("series_instance_uid", generate_uid()),
        sop_instance_uid=kw.pop("sop_instance_uid", generate_uid()),
        series_number=kw.pop("series_number", 901),
        **kw,
    )


def texts(group) -> list[str]:
    """The box group's sentence: TEXT "Comment" (DCM 121106), which OHIF shows as the measurement's label."""
    return [item.TextValue for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"]


def finding_codes(group) -> list[tuple[str, str]]:
    return [(item.ConceptCodeSequence[0].CodingSchemeDesignator, item.ConceptCodeSequence[0].CodeValue)
            for item in group[0].ContentSequence
            if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Finding.value]


def qualitative(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    """(value type, TEXT value or "CSD:code") of the TID 1500 "Qualitative Evaluations" container, in order."""
    out = []
    for item in ds.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "C0034375":
            for child in item.ContentSequence:
                assert child.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Finding.value
                if child.ValueType == "TEXT":
                    out.append(("TEXT", child.TextValue))
                else:
                    code = child.ConceptCodeSequence[0]
                    out.append(("CODE", f"{code.CodingSchemeDesignator}:{code.CodeValue}"))
    return out


def referenced_uids(ds: pydicom.Dataset, keyword: str) -> set[str]:
    return {
        sop.ReferencedSOPInstanceUID
        for study in ds.get(keyword, [])
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


@pytest.fixture(scope="module")
def frontal(data: Path) -> pydicom.Dataset:
    return read(data, MONO1)


@pytest.fixture(scope="module")
def lateral(frontal: pydicom.Dataset, data: Path) -> pydicom.Dataset:
    return lateral_for(frontal, data)


def test_boxes_become_planar_roi_groups_with_exact_polylines(frontal, lateral, tmp_path):
    before = len(frontal)
    ds = build(frontal, [frontal, lateral], FINDINGS)
    assert len(frontal) == before and "ContributingEquipmentSequence" not in frontal  # input untouched
    sr = write_and_check(ds, tmp_path / "sr.dcm", template=True)

    planar = sr.content.get_planar_roi_measurement_groups()
    boxes = [(i, j, box, f) for i, f in enumerate(FINDINGS, 1) for j, box in enumerate(f.boxes, 1)]
    assert len(planar) == len(boxes) == 3
    for group, (i, j, box, finding) in zip(planar, boxes):
        region = group.roi
        assert region.GraphicType == "POLYLINE"
        np.testing.assert_allclose(np.array(region.GraphicData, dtype=float).reshape(-1, 2),
                                   expected_points(box), atol=1e-3)
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == frontal.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == frontal.SOPClassUID
        assert texts(group) == [finding.text]
        assert group.tracking_identifier == f"Finding {i} box {j}"
        assert group.tracking_uid == finding_tracking_uid(frontal.SOPInstanceUID, REAL, i, j, finding)

    # coded findings (SNOMED CT, from the documented table; expected codes typed here, not taken from the code)
    assert [finding_codes(g) for g in planar] == [[("SCT", "8186001")], [("SCT", "60046008")], [("SCT", "60046008")]]

    # no measurement group without geometry: the box-less sentence is a qualitative evaluation of the report,
    # coded generically ("No pneumothorax." must never be coded as a pneumothorax)
    assert sr.content.get_image_measurement_groups() == []
    assert qualitative(sr) == [("CODE", "SCT:404684003"), ("TEXT", "No pneumothorax.")]

    # the model is the observer, as a device
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    attrs = observer.observer_identifying_attributes
    assert isinstance(attrs, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attrs.name == "CXRReportGen" and attrs.manufacturer_name == "Microsoft"
    assert attrs.model_name == "CXRReportGen" and attrs.uid == REAL.device_uid

    # new series of the source study; the node is the manufacturer; the algorithm is contributing equipment
    assert sr.StudyInstanceUID == frontal.StudyInstanceUID and sr.PatientID == frontal.PatientID
    assert sr.SeriesInstanceUID != frontal.SeriesInstanceUID and sr.Modality == "SR"
    assert sr.Manufacturer == NODE_MANUFACTURER
    algo = [e for e in sr.ContributingEquipmentSequence
            if e.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"]
    assert len(algo) == 1
    assert algo[0].ManufacturerModelName == "CXRReportGen" and algo[0].SoftwareVersions == "cxr-report-gen-1"
    assert algo[0].Manufacturer == "Microsoft" and algo[0].DeviceUID == REAL.device_uid
    assert sr.SeriesDescription == "AI findings CXRReportGen"
    assert "EMULATED" not in str(sr.SeriesDescription)
    assert referenced_uids(sr, "CurrentRequestedProcedureEvidenceSequence") == {
        frontal.SOPInstanceUID, lateral.SOPInstanceUID}
    assert "PertinentOtherEvidenceSequence" not in sr
    assert "PixelData" not in sr


def test_monochrome2_secondary_capture_frontal(data: Path, tmp_path):
    frontal = read(data, JPEG)  # SC image, empty birth date / study ID, an invalid PatientAge ("62")
    lateral = lateral_for(frontal, data)
    sr = write_and_check(build(frontal, [frontal, lateral], FINDINGS), tmp_path / "sr.dcm")
    assert len(sr.content.get_planar_roi_measurement_groups()) == 3
    assert "PatientAge" not in sr  # invalid AS value is not copied


def test_full_dataset_with_pixels_is_accepted(data: Path, tmp_path):
    frontal = pydicom.dcmread(data / MONO1)
    sr = write_and_check(build(frontal, [frontal], FINDINGS[:1]), tmp_path / "sr.dcm")
    assert "PixelData" not in sr
    assert len(sr.content.get_planar_roi_measurement_groups()) == 1


def test_zero_findings_is_a_valid_report(frontal, lateral, tmp_path):
    sr = write_and_check(build(frontal, [frontal, lateral], []), tmp_path / "sr.dcm", template=True)
    assert sr.content.get_planar_roi_measurement_groups() == []
    assert sr.content.get_image_measurement_groups() == []
    assert qualitative(sr) == [("CODE", "SCT:404684003"), ("TEXT", NO_FINDINGS_TEXT)]
    assert referenced_uids(sr, "CurrentRequestedProcedureEvidenceSequence") == {
        frontal.SOPInstanceUID, lateral.SOPInstanceUID}


def test_predecessor_is_referenced(frontal, lateral, tmp_path):
    first_path = tmp_path / "first.dcm"
    series_uid = generate_uid()
    write_and_check(build(frontal, [frontal, lateral], FINDINGS[:1], series_instance_uid=series_uid), first_path)
    first = pydicom.dcmread(first_path)

    second = write_and_check(
        build(frontal, [frontal, lateral], FINDINGS, series_instance_uid=series_uid, instance_number=2,
              predecessor=first),
        tmp_path / "second.dcm",
    )
    (study,) = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert sop.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert sop.ReferencedSOPClassUID == first.SOPClassUID
    # the repeated finding keeps its tracking UID across versions
    old = hd.sr.srread(first_path).content.get_planar_roi_measurement_groups()[0].tracking_uid
    assert second.content.get_planar_roi_measurement_groups()[0].tracking_uid == old


def test_emulated_output_is_labelled(frontal, lateral, tmp_path):
    sr = write_and_check(build(frontal, [frontal, lateral], FINDINGS, algorithm=EMULATED), tmp_path / "sr.dcm")
    assert sr.SeriesDescription == "AI findings CXRReportGen (EMULATED)"
    attrs = sr.content.get_observer_contexts()[0].observer_identifying_attributes
    assert "EMULATED" in attrs.name
    assert attrs.uid != REAL.device_uid
    algo = sr.ContributingEquipmentSequence[-1]
    assert "EMULATED" in algo.ContributionDescription and algo.SoftwareVersions == "emulator-0.1"

    # a caller's own description still says EMULATED, and stays within LO's 64 characters
    sr2 = build(frontal, [frontal], [], algorithm=EMULATED, series_description="X" * 80)
    assert len(sr2.SeriesDescription) <= 64 and sr2.SeriesDescription.endswith("(EMULATED)")


def test_prior_study_goes_to_pertinent_other_evidence(frontal, lateral, tmp_path):
    prior = prior_of(frontal)
    sr = write_and_check(build(frontal, [frontal, lateral], FINDINGS, other_evidence=[prior]), tmp_path / "sr.dcm",
                         template=True)
    assert referenced_uids(sr, "PertinentOtherEvidenceSequence") == {prior.SOPInstanceUID}
    assert prior.SOPInstanceUID not in referenced_uids(sr, "CurrentRequestedProcedureEvidenceSequence")


def test_boxes_are_ordered_and_clipped_to_the_image(frontal, tmp_path):
    rows, cols = int(frontal.Rows), int(frontal.Columns)
    findings = [GroundedFinding("Reversed and overflowing.", ((cols + 10.0, 50.0, -5.0, rows + 0.5),))]
    sr = write_and_check(build(frontal, [frontal], findings), tmp_path / "sr.dcm")
    region = sr.content.get_planar_roi_measurement_groups()[0].roi
    np.testing.assert_allclose(np.array(region.GraphicData, dtype=float).reshape(-1, 2),
                               expected_points((0.0, 50.0, float(cols), float(rows))), atol=1e-3)


def test_non_finite_box_is_refused(frontal):
    with pytest.raises(ValueError, match="non-finite"):
        build(frontal, [frontal], [GroundedFinding("bad", ((float("nan"), 0.0, 1.0, 1.0),))])


def test_missing_identity_is_refused(frontal):
    broken = copy.deepcopy(frontal)
    del broken.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build(broken, [], FINDINGS)


@pytest.mark.parametrize("sentence, code", [
    ("There is a small left pleural effusion.", ("SCT", "60046008")),
    ("Right basal opacity, possibly atelectasis.", ("SCT", "46621007")),
    ("Patchy opacities in both lower lobes.", ("RADLEX", "RID28530")),
    ("The heart is enlarged.", ("SCT", "8186001")),
    ("Small right apical pneumothorax.", ("SCT", "36118008")),
    ("No pleural effusion or pneumothorax.", ("SCT", "404684003")),
    ("Lungs are clear without focal consolidation.", ("SCT", "404684003")),
    ("Median sternotomy wires are noted.", ("SCT", "404684003")),
])
def test_sentences_are_coded_by_the_documented_table(frontal, tmp_path, sentence, code):
    sr = build(frontal, [frontal], [GroundedFinding(sentence, ((10.0, 10.0, 50.0, 50.0),))])
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    (group,) = hd.sr.srread(tmp_path / "sr.dcm").content.get_planar_roi_measurement_groups()
    assert finding_codes(group) == [code] and texts(group) == [sentence]


def test_several_sentences_without_a_box_stay_in_template_order(frontal, tmp_path):
    findings = [GroundedFinding("Small left pleural effusion."), GroundedFinding("No pneumothorax."),
                GroundedFinding("Cardiomegaly.", ((5.0, 5.0, 20.0, 20.0),))]
    sr = write_and_check(build(frontal, [frontal], findings), tmp_path / "sr.dcm", template=True)
    assert qualitative(sr) == [("CODE", "SCT:60046008"), ("CODE", "SCT:404684003"),
                               ("TEXT", "Small left pleural effusion."), ("TEXT", "No pneumothorax.")]
    assert [texts(g) for g in sr.content.get_planar_roi_measurement_groups()] == [["Cardiomegaly."]]
