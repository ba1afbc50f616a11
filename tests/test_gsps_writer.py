"""The CXRReportGen boxes as a GSPS: valid (dciodvfy), right polarity, the image's window, exact box outlines."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_out.algorithm import AlgorithmInfo
from dicom_out.gsps import GRAPHIC_LAYER, build_findings_gsps, finding_label
from dicom_out.sr import GroundedFinding, build_findings_sr
from support.validate import assert_valid_dicom

MONO1 = "cxr/cr_pa_mono1_uncompressed.dcm"  # MONOCHROME1, 1955 rows x 1841 columns, window 15000/30000
JPEG = "cxr/cr_pa_jpeg_baseline.dcm"  # MONOCHROME2, 1024 x 1024, no window
NO_VIEW = "cxr/dx_frontal_no_viewposition.dcm"

REAL = AlgorithmInfo(name="CXRReportGen", version="cxr-report-gen-1")
EMULATED = AlgorithmInfo(name="CXRReportGen", version="emulator-0.1", emulated=True)

FINDINGS = (
    GroundedFinding("Cardiomegaly is present.", ((100.5, 200.25, 400.0, 600.75),)),
    GroundedFinding("Bilateral pleural effusions.", ((10.0, 20.0, 30.5, 40.5), (700.0, 800.0, 1000.25, 1020.0))),
    GroundedFinding("No pneumothorax.", ()),
)
CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")


def read(data: Path, name: str) -> pydicom.Dataset:
    return pydicom.dcmread(data / name, stop_before_pixels=True)


def build(frontal, findings=FINDINGS, algorithm=REAL, **kw) -> pydicom.Dataset:
    return build_findings_gsps(
        frontal=frontal,
        findings=findings,
        algorithm=algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=902,
        **kw,
    )


def write_and_check(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    ds.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    return pydicom.dcmread(path)


def expected_points(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])


def all_boxes(findings):
    return [(i, j, box, f) for i, f in enumerate(findings, 1) for j, box in enumerate(f.boxes, 1)]


def check_graphics(pr: pydicom.Dataset, frontal: pydicom.Dataset, findings) -> None:
    (annotation,) = pr.GraphicAnnotationSequence
    assert annotation.GraphicLayer == GRAPHIC_LAYER
    assert [layer.GraphicLayer for layer in pr.GraphicLayerSequence] == [GRAPHIC_LAYER]
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == frontal.SOPInstanceUID
    boxes = all_boxes(findings)
    graphics = annotation.GraphicObjectSequence
    labels = annotation.TextObjectSequence
    assert len(graphics) == len(labels) == len(boxes)
    for graphic, label, (i, j, box, finding) in zip(graphics, labels, boxes):
        assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
        assert graphic.NumberOfGraphicPoints == 5 and graphic.GraphicFilled == "N"
        np.testing.assert_allclose(np.array(graphic.GraphicData, dtype=float).reshape(-1, 2),
                                   expected_points(box), atol=1e-3)
        assert graphic.TrackingID == f"Finding {i} box {j}"
        assert label.UnformattedTextValue == finding_label(i, finding.text)
        assert len(label.UnformattedTextValue) <= 64
        assert label.AnchorPointAnnotationUnits == "PIXEL"
        np.testing.assert_allclose([float(v) for v in label.AnchorPoint], box[:2], atol=1e-3)
        x, y = (float(v) for v in label.AnchorPoint)
        assert 0 <= x <= frontal.Columns and 0 <= y <= frontal.Rows


def test_monochrome1_is_inverted_and_keeps_its_window(data: Path, tmp_path):
    frontal = read(data, MONO1)
    assert frontal.PhotometricInterpretation == "MONOCHROME1"
    pr = write_and_check(build(frontal), tmp_path / "pr.dcm")
    assert pr.PresentationLUTShape == "INVERSE"
    (voi,) = pr.SoftcopyVOILUTSequence
    assert float(voi.WindowCenter) == float(frontal.WindowCenter) == 15000.0
    assert float(voi.WindowWidth) == float(frontal.WindowWidth) == 30000.0
    check_graphics(pr, frontal, FINDINGS)
    assert CODE_STRING.fullmatch(pr.ContentLabel)
    assert pr.StudyInstanceUID == frontal.StudyInstanceUID and pr.Modality == "PR"
    assert "EMULATED" not in pr.SeriesDescription
    assert pr.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0].CodeMeaning == (
        "Processing Algorithm")


def test_monochrome2_without_window_stays_identity(data: Path, tmp_path):
    frontal = read(data, JPEG)
    assert frontal.PhotometricInterpretation == "MONOCHROME2" and "WindowCenter" not in frontal
    pr = write_and_check(build(frontal), tmp_path / "pr.dcm")
    assert pr.PresentationLUTShape == "IDENTITY"
    assert "SoftcopyVOILUTSequence" not in pr  # nothing computed: the viewer's default window applies
    check_graphics(pr, frontal, FINDINGS)


def test_series_laterality(data: Path, tmp_path):
    # a CHEST image: body part copied, no Laterality (an unpaired part); dciodvfy is silent
    chest = write_and_check(build(read(data, MONO1)), tmp_path / "chest.dcm")
    assert chest.BodyPartExamined == "CHEST" and "Laterality" not in chest
    # no body part: empty Laterality (dciodvfy: a warning; absent would be an error)
    frontal = read(data, NO_VIEW)
    assert "BodyPartExamined" not in frontal
    pr = write_and_check(build(frontal), tmp_path / "pr.dcm")
    assert pr.Laterality == "" and "BodyPartExamined" not in pr


def test_zero_findings_still_valid(data: Path, tmp_path):
    frontal = read(data, MONO1)
    pr = write_and_check(build(frontal, findings=[]), tmp_path / "pr.dcm")
    assert "GraphicAnnotationSequence" not in pr
    assert pr.PresentationLUTShape == "INVERSE"


def test_emulated_output_is_labelled(data: Path, tmp_path):
    frontal = read(data, JPEG)
    pr = write_and_check(build(frontal, algorithm=EMULATED), tmp_path / "pr.dcm")
    assert "EMULATED" in pr.ContentLabel and CODE_STRING.fullmatch(pr.ContentLabel)
    assert "EMULATED" in pr.ContentDescription and "EMULATED" in pr.SeriesDescription
    assert "EMULATED" in pr.GraphicLayerSequence[0].GraphicLayerDescription


def test_long_sentence_label_is_truncated_and_boxes_clipped(data: Path, tmp_path):
    frontal = read(data, JPEG)
    sentence = "There is a large opacity " + "in the right lower lobe " * 6
    findings = [GroundedFinding(sentence, ((-3.0, -2.0, 1030.0, 2000.0),))]
    pr = write_and_check(build(frontal, findings=findings), tmp_path / "pr.dcm")
    graphic = pr.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    np.testing.assert_allclose(np.array(graphic.GraphicData, dtype=float).reshape(-1, 2),
                               expected_points((0.0, 0.0, 1024.0, 1024.0)), atol=1e-3)
    text = pr.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert len(text) == 64 and text.startswith("1: There is a large opacity") and text.endswith("...")


def test_input_untouched_and_tracking_uids_shared_with_sr(data: Path):
    frontal = read(data, MONO1)
    before = copy.deepcopy(frontal)
    pr = build(frontal)
    assert frontal == before
    sr = build_findings_sr(frontal=frontal, evidence=[frontal], findings=FINDINGS, algorithm=REAL,
                           series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=901)
    sr_uids = [g.tracking_uid for g in hd.sr.ComprehensiveSR.from_dataset(sr).content
               .get_planar_roi_measurement_groups()]
    pr_uids = [g.TrackingUID for g in pr.GraphicAnnotationSequence[0].GraphicObjectSequence]
    assert sr_uids == pr_uids


def test_colour_image_is_refused(data: Path):
    frontal = read(data, JPEG)
    frontal.SamplesPerPixel = 3
    with pytest.raises(ValueError, match="grayscale"):
        build(frontal)
