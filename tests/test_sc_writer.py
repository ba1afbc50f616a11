"""The Secondary Capture fallback: valid (dciodvfy), DERIVED, burned in, the boxes and outlines where they belong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid
from support.validate import assert_valid_dicom

from converters.pixels import to_uint8
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.sc import BANNER, BoxAnnotation, MaskAnnotation, build_annotated_sc

EMULATED = AlgorithmInfo(name="CXRReportGen", version="emulator-0.1", emulated=True)
YELLOW = np.array([255, 220, 0])


def build(source: pydicom.Dataset, **kw) -> pydicom.Dataset:
    return build_annotated_sc(source=source, image=to_uint8(source), algorithm=kw.pop("algorithm", EMULATED),
                              series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
                              series_number=9904, **kw)


def write_and_read(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    ds.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("name", ["cxr/cr_pa_jpeg_baseline.dcm", "cxr/cr_pa_mono1_uncompressed.dcm"])
def test_boxes_are_burned_in_where_the_model_put_them(data: Path, tmp_path: Path, name: str) -> None:
    source = pydicom.dcmread(data / name)
    box = (200.0, 300.0, 600.0, 700.0)
    sc = write_and_read(build(source, boxes=[BoxAnnotation("Small left pleural effusion.", box)]), tmp_path / "sc.dcm")

    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Modality in ("OT", source.Modality)
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert BANNER in sc.DerivationDescription and "EMULATED" in sc.SeriesDescription
    assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns) and sc.PhotometricInterpretation == "RGB"
    algo = sc.ContributingEquipmentSequence[-1]
    assert algo.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"

    px = sc.pixel_array.astype(int)
    x0, y0, x1, y1 = (int(v) for v in box)
    # the box's edges are drawn in the box colour; its inside is the image (grey: R = G = B)
    for x, y in [(x0, (y0 + y1) // 2), (x1 - 1, (y0 + y1) // 2), ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1 - 1)]:
        assert np.abs(px[y, x] - YELLOW).max() <= 1, (x, y, px[y, x])
    inside = px[y0 + 40:y1 - 40, x0 + 40:x1 - 40]
    assert (inside[..., 0] == inside[..., 1]).all() and (inside[..., 1] == inside[..., 2]).all()
    # the banner is a red band across the top
    assert px[2, :, 0].mean() > 120 and px[2, :, 1].mean() < 60


def test_segment_outline_follows_the_mask(data: Path, tmp_path: Path) -> None:
    source = pydicom.dcmread(sorted((data / "ct/chest_ct_5mm_64slices").glob("*.dcm"))[30])
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    mask[200:300, 150:350] = True
    sc = write_and_read(build(source, masks=[MaskAnnotation("liver", mask)],
                              algorithm=AlgorithmInfo(name="MedImageParse3D", version="v1")), tmp_path / "sc.dcm")
    px = sc.pixel_array.astype(int)
    coloured = (px[..., 0] != px[..., 1]) | (px[..., 1] != px[..., 2])
    coloured[: source.Rows // 10] = False  # banner
    coloured[source.Rows * 3 // 4:] = False  # legend
    ys, xs = np.nonzero(coloured)
    # the mask's boundary, 2 pixels thick (at most one pixel beyond the mask)
    assert ys.min() == 200 and ys.max() in (299, 300) and xs.min() == 150 and xs.max() in (349, 350)
    assert not coloured[210:290, 160:340].any(), "only the outline is drawn, not the inside"
    assert "EMULATED" not in sc.SeriesDescription
    hu = apply_modality_lut(pydicom.dcmread(sorted((data / "ct/chest_ct_5mm_64slices").glob("*.dcm"))[30])
                            .pixel_array, source)
    assert hu.shape == mask.shape


def test_refuses_an_image_of_another_size(data: Path) -> None:
    source = pydicom.dcmread(data / "cxr/cr_pa_jpeg_baseline.dcm")
    with pytest.raises(ValueError, match="shape"):
        build_annotated_sc(source=source, image=np.zeros((10, 10), np.uint8), algorithm=EMULATED,
                           series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=1)
