"""converters.cxr and its steps (model_image, cxr_views, cxr_select, cxr_text): model PNGs, view classification
and selection, clinical text, build_cxr_inputs.

Header variants are derived in the tests from the real files: the data set has no human lateral chest image, so a
lateral is derived from the veterinary DX lateral (given ViewPosition LL, new UIDs) as the data README suggests.
"""

from __future__ import annotations

import copy
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from converters.cxr import NoFrontalView, build_cxr_inputs
from converters.cxr_select import select_views, skip_reason
from converters.cxr_text import ClinicalText, clinical_text
from converters.cxr_views import classify_view
from converters.model_image import to_model_image
from converters.pixels import to_uint8


def header(data: Path, name: str, **changes: object) -> Dataset:
    """A header of a real file (no pixels) with new SOP Instance UID and the given attributes set (None deletes)."""
    ds = pydicom.dcmread(data / "cxr" / name, stop_before_pixels=True)
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def bare_frontal(data: Path, **changes: object) -> Dataset:
    """The NIH frontal: no ViewPosition, orientation, view code or view words. Only ``changes`` can classify it."""
    return header(data, "dx_frontal_no_viewposition.dcm", **changes)


def view_code(value: str, scheme: str, meaning: str) -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return Sequence([item])


def write(ds: Dataset, path: Path) -> Path:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def derived_lateral(data: Path, folder: Path, **changes: object) -> Path:
    """The veterinary lateral as a study's human-like lateral: ViewPosition LL, new UIDs, pixels kept."""
    ds = pydicom.dcmread(data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.ViewPosition = "LL"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return write(ds, folder / "lateral.dcm")


# --- ModelImage ----------------------------------------------------------------------------------------------------


def test_png_decodes_to_the_exact_array(data: Path) -> None:
    for name in ("cr_pa_jpeg_baseline.dcm", "dx_lateral_thorax_veterinary.dcm"):
        ds = pydicom.dcmread(data / "cxr" / name)
        image = to_model_image(ds)
        decoded = Image.open(BytesIO(image.png))
        assert decoded.format == "PNG" and decoded.mode == "L"
        np.testing.assert_array_equal(np.asarray(decoded), to_uint8(ds))
        assert (image.png_width, image.png_height) == (ds.Columns, ds.Rows)
        assert (image.source_columns, image.source_rows) == (ds.Columns, ds.Rows)
        assert image.scale_x == image.scale_y == 1.0
        assert image.sop_instance_uid == ds.SOPInstanceUID
        assert image.to_source(10.5, 3.25) == (10.5, 3.25)


def test_max_side_downscales_keeps_aspect_and_maps_corners(data: Path) -> None:
    ds = pydicom.dcmread(data / "cxr" / "dx_lateral_thorax_veterinary.dcm")  # 211 columns x 169 rows
    image = to_model_image(ds, max_side=100)
    decoded = Image.open(BytesIO(image.png))
    assert decoded.size == (image.png_width, image.png_height) == (100, 80)
    assert abs(image.png_width / image.png_height - 211 / 169) < 1 / image.png_height
    assert image.scale_x == 211 / 100 and image.scale_y == 169 / 80
    assert image.to_source(0, 0) == (0.0, 0.0)
    assert image.to_source(image.png_width, image.png_height) == (211.0, 169.0)
    assert image.to_source(image.png_width, 0) == (211.0, 0.0)
    assert image.to_source(0, image.png_height) == (0.0, 169.0)
    assert image.to_source(50, 40) == pytest.approx((50 * image.scale_x, 40 * image.scale_y))
    assert image.from_source(*image.to_source(37.5, 12.25)) == pytest.approx((37.5, 12.25))
    # The downscaled picture is the same picture.
    reference = np.asarray(Image.fromarray(to_uint8(ds)).resize((100, 80), Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(decoded, dtype=float) - reference).mean() < 8


def test_max_side_never_upscales_and_rejects_nonsense(data: Path) -> None:
    ds = pydicom.dcmread(data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    image = to_model_image(ds, max_side=4096)
    assert (image.png_width, image.png_height) == (211, 169)
    with pytest.raises(ValueError):
        to_model_image(ds, max_side=0)


def test_max_side_on_the_big_cr(data: Path) -> None:
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_j2k_lossless.dcm")  # 1841 columns x 1955 rows
    image = to_model_image(ds, max_side=512)
    assert (image.png_width, image.png_height) == (482, 512)
    assert image.to_source(482, 512) == (1841.0, 1955.0)


# --- classify_view -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("position", "kind"), [("PA", "frontal"), ("AP", "frontal"), ("LL", "lateral"),
                                                ("RL", "lateral"), ("LATERAL", "lateral"), ("LLD", "other"),
                                                ("RAO", "other")])
def test_view_position(data: Path, position: str, kind: str) -> None:
    # The veterinary header says L\F (frontal by orientation): ViewPosition comes first.
    assert classify_view(header(data, "dx_lateral_thorax_veterinary.dcm", ViewPosition=position)) == (
        kind, f"ViewPosition={position}" + (" (decubitus or oblique)" if kind == "other" else ""))


def test_view_codes_are_the_ones_in_pydicoms_cid_4010() -> None:
    # The codes the module docstring documents, checked against pydicom's tables (CID 4010 "DX View").
    assert codes.SCT.PosteroAnterior.value == "272479007"
    assert codes.SCT.AnteroPosterior.value == "399348003"
    assert codes.SCT.LateralProjection.value == "399067008"
    assert codes.SCT.LeftLateral.value == "399173006"
    assert codes.SCT.RightLateral.value == "399198007"
    assert codes.SCT.Frontal.value == "399033003"


@pytest.mark.parametrize(("value", "scheme", "meaning", "kind"), [
    ("272479007", "SCT", "postero-anterior", "frontal"),
    ("399348003", "SCT", "antero-posterior", "frontal"),
    ("R-10206", "SRT", "antero-posterior", "frontal"),
    ("R-10214", "SNM3", "postero-anterior", "frontal"),
    ("399173006", "SCT", "left lateral", "lateral"),
    ("399198007", "SCT", "right lateral", "lateral"),
    ("R-10236", "SRT", "left lateral", "lateral"),
    ("399067008", "SCT", "lateral", "lateral"),
    ("399135007", "SCT", "left anterior oblique", "other"),
    ("99LOCAL", "99XYZ", "Lateral view", "lateral"),  # unknown code: its meaning is read
])
def test_view_code_sequence_only(data: Path, value: str, scheme: str, meaning: str, kind: str) -> None:
    ds = bare_frontal(data, ViewCodeSequence=view_code(value, scheme, meaning))
    found, reason = classify_view(ds)
    assert found == kind
    assert reason.startswith("ViewCodeSequence") and value in reason


def test_view_code_wins_over_orientation_and_description(data: Path) -> None:
    ds = header(data, "dx_lateral_thorax_veterinary.dcm",
                ViewCodeSequence=view_code("399173006", "SCT", "left lateral"))
    assert classify_view(ds)[0] == "lateral"


@pytest.mark.parametrize(("orientation", "kind"), [
    (["L", "F"], "frontal"), (["R", "F"], "frontal"), (["F", "L"], "frontal"), (["LP", "FL"], "frontal"),
    (["A", "F"], "lateral"), (["P", "F"], "lateral"), (["H", "P"], "lateral"),
    (["L", "P"], "other"),  # axial plane: does not decide, and nothing else does
])
def test_patient_orientation_only(data: Path, orientation: list[str], kind: str) -> None:
    found, reason = classify_view(bare_frontal(data, PatientOrientation=orientation))
    assert found == kind
    if kind != "other":
        assert reason.startswith("PatientOrientation=")


@pytest.mark.parametrize(("changes", "kind", "mentions"), [
    ({"SeriesDescription": "view: PA"}, "frontal", "PA"),
    ({"SeriesDescription": "Chest AP portable"}, "frontal", "AP"),
    ({"ProtocolName": "THORAX POSTERO-ANTERIOR"}, "frontal", "POSTEROANTERIOR"),
    ({"SeriesDescription": "Chest Lat"}, "lateral", "LAT"),
    ({"ImageComments": "frontal"}, "frontal", "FRONTAL"),
    ({"SeriesDescription": "CHEST LAT DECUB"}, "other", "DECUB"),
    ({"StudyDescription": "XR CHEST LATERAL"}, "lateral", "LATERAL"),
    # Names both views: undecided, so the next attribute decides.
    ({"SeriesDescription": "PA-LAT", "StudyDescription": "CHEST PA"}, "frontal", "StudyDescription"),
    ({"StudyDescription": "CHEST PA AND LATERAL"}, "other", "no view"),
])
def test_description_only(data: Path, changes: dict[str, str], kind: str, mentions: str) -> None:
    found, reason = classify_view(bare_frontal(data, **changes))
    assert found == kind
    assert mentions in reason


def test_veterinary_lateral_by_its_processing_description(data: Path) -> None:
    # Without its (human-frontal-looking) PatientOrientation, "CANINE LATERAL THORAX" decides.
    ds = header(data, "dx_lateral_thorax_veterinary.dcm", PatientOrientation=None)
    assert classify_view(ds) == ("lateral", "AcquisitionDeviceProcessingDescription mentions LATERAL")


@pytest.mark.parametrize(("label", "kind"), [
    ("x-ray chest posteroanterior", "frontal"),
    ("x-ray chest anteroposterior", "frontal"),
    ("x-ray chest lateral", "lateral"),
    ("x-ray abdomen", "other"),
])
def test_classified_label_only(data: Path, label: str, kind: str) -> None:
    ds = bare_frontal(data)
    assert classify_view(ds)[0] == "other"
    found, reason = classify_view(ds, label)
    assert found == kind and label in reason


def test_header_wins_over_classified_label(data: Path) -> None:
    ds = header(data, "cr_pa_jpeg_baseline.dcm")
    assert classify_view(ds, "x-ray chest lateral") == ("frontal", "ViewPosition=PA")


# --- select_views --------------------------------------------------------------------------------------------------


def test_select_frontal_and_lateral(data: Path) -> None:
    frontal = header(data, "cr_pa_jpeg_baseline.dcm")
    lateral = header(data, "dx_lateral_thorax_veterinary.dcm", ViewPosition="LL")
    selection = select_views([(Path("f.dcm"), frontal), (Path("l.dcm"), lateral)])
    assert (selection.frontal, selection.lateral) == (Path("f.dcm"), Path("l.dcm"))
    assert selection.frontal_projection == "PA"
    assert selection.reasons == {"frontal": "ViewPosition=PA", "lateral": "ViewPosition=LL"}


def test_two_frontals_pa_wins_over_later_ap(data: Path) -> None:
    pa = header(data, "cr_pa_jpeg_baseline.dcm", InstanceNumber=1, ContentDate="20240101", ContentTime="080000")
    ap = header(data, "cr_pa_jpeg_baseline.dcm", ViewPosition="AP", InstanceNumber=9,
                AcquisitionDateTime="20240102090000")
    selection = select_views([(Path("ap.dcm"), ap), (Path("pa.dcm"), pa)])
    assert selection.frontal == Path("pa.dcm") and selection.frontal_projection == "PA"
    assert "chosen among 2 frontal images" in selection.reasons["frontal"]
    assert pa.SOPInstanceUID in selection.reasons[f"skipped:{ap.SOPInstanceUID}"]


def test_two_pa_latest_acquisition_then_highest_instance(data: Path) -> None:
    early = header(data, "cr_pa_jpeg_baseline.dcm", InstanceNumber=5, AcquisitionDate="20240101",
                   AcquisitionTime="235959.9")
    late = header(data, "cr_pa_jpeg_baseline.dcm", InstanceNumber=2, AcquisitionDateTime="20240102000000")
    assert select_views([(Path("late"), late), (Path("early"), early)]).frontal == Path("late")
    low = header(data, "cr_pa_jpeg_baseline.dcm", InstanceNumber=1)
    high = header(data, "cr_pa_jpeg_baseline.dcm", InstanceNumber=2)
    assert select_views([(Path("high"), high), (Path("low"), low)]).frontal == Path("high")


def test_header_pa_beats_classifier_frontal(data: Path) -> None:
    guessed = bare_frontal(data, InstanceNumber=99)
    pa = header(data, "cr_pa_jpeg_baseline.dcm")
    selection = select_views([(Path("g"), guessed), (Path("pa"), pa)],
                             {guessed.SOPInstanceUID: "x-ray chest posteroanterior"})
    assert selection.frontal == Path("pa")
    # A PA/AP known only from the zero-shot label is never stated as the projection.
    only_guess = select_views([(Path("g"), guessed)], {guessed.SOPInstanceUID: "x-ray chest posteroanterior"})
    assert only_guess.frontal == Path("g") and only_guess.frontal_projection is None


def test_non_images_and_unusable_images_are_skipped(data: Path) -> None:
    sr = pydicom.dcmread(data / "reference" / "highdicom_sr_tid1500.dcm", stop_before_pixels=True)
    ct = pydicom.dcmread(data / "compressed" / "CT1_UNC.dcm", stop_before_pixels=True)
    no_rows = header(data, "cr_pa_jpeg_baseline.dcm", Rows=None, Columns=None)
    localizer = header(data, "cr_pa_jpeg_baseline.dcm", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    copy_ = header(data, "cr_pa_jpeg_baseline.dcm", ImageType=["DERIVED", "SECONDARY"])
    dose = header(data, "cr_pa_jpeg_baseline.dcm", SeriesDescription="Dose Report")
    unknown = bare_frontal(data)
    frontal = header(data, "cr_pa_jpeg_baseline.dcm")
    headers = [(Path(f"{i}.dcm"), ds) for i, ds in enumerate([sr, ct, no_rows, localizer, copy_, dose, unknown])]
    selection = select_views(headers + [(Path("frontal.dcm"), frontal)])
    assert selection.frontal == Path("frontal.dcm") and selection.lateral is None
    reasons = selection.reasons
    assert reasons[f"skipped:{sr.SOPInstanceUID}"].startswith("not an image")
    assert "not a radiograph" in reasons[f"skipped:{ct.SOPInstanceUID}"]
    assert reasons[f"skipped:{no_rows.SOPInstanceUID}"] == "not an image (no Rows/Columns)"
    assert "localizer" in reasons[f"skipped:{localizer.SOPInstanceUID}"]
    assert "DERIVED" in reasons[f"skipped:{copy_.SOPInstanceUID}"]
    assert "dose" in reasons[f"skipped:{dose.SOPInstanceUID}"]
    assert reasons[f"skipped:{unknown.SOPInstanceUID}"].startswith("not a frontal or lateral view")
    assert skip_reason(frontal) is None


def test_no_frontal_gives_none_and_build_raises(data: Path, tmp_path: Path) -> None:
    lateral_path = derived_lateral(data, tmp_path)
    selection = select_views([(lateral_path, pydicom.dcmread(lateral_path, stop_before_pixels=True))])
    assert selection.frontal is None and selection.lateral == lateral_path
    with pytest.raises(NoFrontalView, match="lateral: ViewPosition=LL") as caught:
        build_cxr_inputs([lateral_path])
    assert caught.value.selection is not None and caught.value.selection.lateral == lateral_path


# --- clinical text -------------------------------------------------------------------------------------------------


def test_clinical_text_order_and_empty_values(data: Path) -> None:
    ds = header(data, "cr_pa_mono1_uncompressed.dcm")  # StudyDescription THORAX, nothing else
    assert clinical_text(ds) == ClinicalText(indication=None, technique="THORAX.", comparison=None)
    assert clinical_text(ds, views="PA view of the chest").technique == "THORAX. PA view of the chest."

    ds.AdmittingDiagnosesDescription = "Pneumonia"
    assert clinical_text(ds).indication == "Pneumonia"
    ds.ReasonForStudy = "Fever"
    assert clinical_text(ds).indication == "Fever"
    request = Dataset()
    request.ReasonForTheRequestedProcedure = "Cough, rule out pneumonia"
    empty_request = Dataset()
    empty_request.ReasonForTheRequestedProcedure = " "
    ds.RequestAttributesSequence = Sequence([empty_request, request])
    assert clinical_text(ds).indication == "Cough, rule out pneumonia"
    ds.ReasonForTheRequestedProcedure = "Shortness of breath"
    assert clinical_text(ds).indication == "Shortness of breath"
    ds.ReasonForTheRequestedProcedure = ""
    assert clinical_text(ds).indication == "Cough, rule out pneumonia"

    ds.PerformedProcedureStepDescription = "XR CHEST 2 VIEWS"
    assert clinical_text(ds).technique == "XR CHEST 2 VIEWS."
    ds.RequestedProcedureDescription = "Chest radiograph"
    assert clinical_text(ds, views="PA and lateral views of the chest").technique == (
        "Chest radiograph. PA and lateral views of the chest.")

    ds.RequestedProcedureComments = "Portable.\nComparison: chest radiograph of 2024-01-02"
    assert clinical_text(ds).comparison == "chest radiograph of 2024-01-02"


def test_clinical_text_all_empty(data: Path) -> None:
    ds = bare_frontal(data, StudyDescription="")
    assert clinical_text(ds) == ClinicalText(None, None, None)


# --- build_cxr_inputs ----------------------------------------------------------------------------------------------


def test_build_cxr_inputs_study(data: Path, tmp_path: Path) -> None:
    frontal_ds = pydicom.dcmread(data / "cxr" / "cr_pa_jpeg_baseline.dcm")
    frontal_ds.ReasonForTheRequestedProcedure = "Cough"
    frontal_path = write(frontal_ds, tmp_path / "frontal.dcm")
    lateral_path = derived_lateral(data, tmp_path, StudyInstanceUID=frontal_ds.StudyInstanceUID)
    header_only = copy.deepcopy(pydicom.dcmread(frontal_path, stop_before_pixels=True))
    header_only.SOPInstanceUID = generate_uid()
    header_only_path = write(header_only, tmp_path / "no_pixels.dcm")
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not DICOM")
    paths = [not_dicom, header_only_path, lateral_path, data / "reference" / "highdicom_sr_tid1500.dcm", frontal_path]

    inputs = build_cxr_inputs(paths, max_side=256)

    assert inputs.frontal_path == frontal_path and inputs.lateral_path == lateral_path
    assert (inputs.frontal.png_width, inputs.frontal.png_height) == (256, 256)
    assert inputs.frontal.sop_instance_uid == frontal_ds.SOPInstanceUID
    assert inputs.lateral is not None and max(inputs.lateral.png_width, inputs.lateral.png_height) == 211
    assert inputs.text == ClinicalText(indication="Cough", technique="PA and lateral views of the chest.",
                                       comparison=None)
    reasons = inputs.selection.reasons
    assert reasons["frontal"] == "ViewPosition=PA" and reasons["lateral"] == "ViewPosition=LL"
    assert reasons[f"skipped:{header_only.SOPInstanceUID}"] == "not an image (no Pixel Data)"
    assert reasons[f"skipped:{not_dicom}"].startswith("not readable as DICOM")
    sr_uid = pydicom.dcmread(paths[3], stop_before_pixels=True).SOPInstanceUID
    assert reasons[f"skipped:{sr_uid}"].startswith("not an image")


def test_build_cxr_inputs_classifier_label_for_headerless_frontal(data: Path) -> None:
    path = data / "cxr" / "dx_frontal_no_viewposition.dcm"
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(NoFrontalView, match="no view in ViewPosition"):
        build_cxr_inputs([path])
    inputs = build_cxr_inputs([path], classified={uid: "x-ray chest anteroposterior"})
    assert inputs.frontal_path == path and inputs.lateral is None
    assert inputs.frontal.png_width == 1024
    # StudyDescription of this file is copied as it is; the projection guessed by the classifier is not stated.
    assert inputs.text.technique == "No Finding. Frontal view of the chest."
