"""DICOM SEG writer: valid (dciodvfy) per source kind, masks and references read back exactly with highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.coding import Code
from pydicom.uid import JPEG2000Lossless, generate_uid
from support.validate import assert_valid_dicom

from dicom_out.algorithm import AlgorithmInfo
from dicom_out.seg import SegmentSpec, build_segmentation
from dicom_out.seg_codes import (
    ANATOMICAL_STRUCTURE,
    BODY_SUBSTANCE,
    MIP_CATEGORIES,
    MIP_CATEGORY_CODES,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    OTHER,
    TISSUE,
    codes_for_category,
    codes_for_prompt,
)

ALGORITHM = AlgorithmInfo("MedImageParse", "mip-deploy-1")
EMULATED = AlgorithmInfo("MedImageParse", "emulator-0.1", emulated=True)

SOURCES = {
    "ct": ["compressed/CT1_UNC.dcm"],
    "cr": ["cxr/cr_pa_mono1_uncompressed.dcm"],  # PixelSpacing 0\0, no Frame of Reference
    "us_rgb": ["other/us_rgb_rle.dcm"],  # no patient geometry
    "ct_3slices": [f"ct/chest_ct_5mm_64slices/1-{n:02d}.dcm" for n in (30, 31, 32)],
}


def _read(data: Path, kind: str, pixels: bool = False) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(data / name, stop_before_pixels=not pixels) for name in SOURCES[kind]]


def _masks(sources: list[pydicom.Dataset], n_segments: int, seed: int = 0) -> np.ndarray:
    """Distinct, partly overlapping shapes per frame and segment; the last segment is empty on frame 0."""
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    rng = np.random.default_rng(seed)
    masks = np.zeros((len(sources), rows, columns, n_segments), dtype=bool)
    for f in range(len(sources)):
        for s in range(n_segments):
            r0, c0 = rng.integers(0, rows // 2), rng.integers(0, columns // 2)
            masks[f, r0 : r0 + rows // 4 + f, c0 : c0 + columns // 5 + s, s] = True
            masks[f, rng.integers(0, rows, 50), rng.integers(0, columns, 50), s] = True  # scattered single pixels
    masks[0, :, :, -1] = False
    return masks


def _segments() -> list[SegmentSpec]:
    return [SegmentSpec.from_model_category("liver", "liver"), SegmentSpec.from_model_category("tumor", "tumor")]


def _build(sources, masks, segments, algorithm=ALGORITHM, **kwargs):
    return build_segmentation(
        source_images=sources,
        masks=masks,
        segments=segments,
        algorithm=algorithm,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=901,
        **kwargs,
    )


def _check_readback(path: Path, sources, masks: np.ndarray, segments, fractional: bool = False) -> None:
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    n_segments = len(segments)
    # every frame is there (omit_empty_frames=False), and each references the right source image
    assert int(seg.NumberOfFrames) == len(sources) * n_segments
    stored = seg.pixel_array
    if stored.ndim == 2:
        stored = stored[None]
    shared = seg.SharedFunctionalGroupsSequence[0]

    def group(item, keyword):  # per-frame first; a single segment's identification is shared (NOTES)
        return item.get(keyword) or shared.get(keyword)

    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source_uid = group(item, "DerivationImageSequence")[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment_number = int(group(item, "SegmentIdentificationSequence")[0].ReferencedSegmentNumber)
        expected = masks[uids.index(source_uid), :, :, segment_number - 1]
        if fractional:
            np.testing.assert_array_equal(stored[index], np.rint(expected * 255).astype(stored.dtype))
        else:
            np.testing.assert_array_equal(stored[index], expected.astype(stored.dtype))
    # highdicom's own reconstruction per source instance
    volume = seg.get_pixels_by_source_instance(uids, rescale_fractional=False)
    assert volume.shape == masks.shape
    if fractional:
        np.testing.assert_array_equal(volume, np.rint(masks * 255).astype(volume.dtype))
    else:
        np.testing.assert_array_equal(volume.astype(bool), masks)
    # segments: label, codes, algorithm
    for number, spec in enumerate(segments, start=1):
        desc = seg.get_segment_description(number)
        assert desc.segment_label == spec.label
        assert desc.segmented_property_category == spec.category
        assert desc.segmented_property_type == spec.property_type
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert desc.algorithm_identification[0].AlgorithmName == ALGORITHM.name
        assert desc.algorithm_identification[0].AlgorithmVersion == ALGORITHM.version
    expected_type = "FRACTIONAL" if fractional else "BINARY"
    assert seg.SegmentationType == expected_type
    assert seg.SeriesDescription == "AI segmentation MedImageParse"
    assert seg.ContributingEquipmentSequence[-1].ManufacturerModelName == "MedImageParse"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID


@pytest.mark.parametrize("kind", list(SOURCES))
def test_binary_seg_valid_and_exact(data: Path, tmp_path: Path, kind: str) -> None:
    sources = _read(data, kind)
    masks = _masks(sources, 2)
    segments = _segments()
    path = tmp_path / f"{kind}.dcm"
    _build(sources, masks, segments).save_as(path)
    assert_valid_dicom(path)
    _check_readback(path, sources, masks, segments)


@pytest.mark.parametrize("kind", list(SOURCES))
def test_fractional_seg_valid_and_exact(data: Path, tmp_path: Path, kind: str) -> None:
    sources = _read(data, kind)
    rng = np.random.default_rng(7)
    masks = np.rint(rng.random((len(sources), int(sources[0].Rows), int(sources[0].Columns), 2)) * 255) / 255
    masks[:, : int(sources[0].Rows) // 3] = 0.0
    segments = _segments()
    path = tmp_path / f"{kind}_fractional.dcm"
    _build(sources, masks, segments, fractional=True).save_as(path)
    assert_valid_dicom(path)
    _check_readback(path, sources, masks, segments, fractional=True)


def test_sources_with_pixels_work_too(data: Path, tmp_path: Path) -> None:
    """Datasets read with their pixel data give the same SEG (highdicom needs only the header)."""
    sources = _read(data, "ct", pixels=True)
    masks = _masks(sources, 1)
    segments = [SegmentSpec.from_prompt("lung nodule")]
    path = tmp_path / "ct_pixels.dcm"
    _build(sources, masks, segments).save_as(path)
    assert_valid_dicom(path)
    _check_readback(path, sources, masks, segments)
    assert "PixelData" in sources[0]  # the input was not modified


def test_jpeg2000_lossless_and_3d_array_for_one_segment(data: Path, tmp_path: Path) -> None:
    sources = _read(data, "ct_3slices")
    masks = _masks(sources, 1)
    segments = [SegmentSpec("left lung", ANATOMICAL_STRUCTURE, codes_for_prompt("lung")[1])]
    seg = _build(sources, masks[..., 0], segments, transfer_syntax_uid=JPEG2000Lossless)
    path = tmp_path / "j2k.dcm"
    seg.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert_valid_dicom(path)
    _check_readback(path, sources, masks, segments)


def test_emulated_label_and_all_16_categories(data: Path, tmp_path: Path) -> None:
    sources = _read(data, "us_rgb")
    segments = [SegmentSpec.from_model_category(f"prompt {name}", name) for name in MIP_CATEGORIES]
    masks = np.zeros((1, int(sources[0].Rows), int(sources[0].Columns), len(segments)), dtype=bool)
    for s in range(len(segments)):
        masks[0, 10 * s : 10 * s + 8, 20:60, s] = True
    seg = _build(sources, masks, segments, algorithm=EMULATED)
    assert seg.SeriesDescription == "AI segmentation MedImageParse (EMULATED)"
    assert "EMULATED" in seg.ContentDescription
    path = tmp_path / "all16.dcm"
    seg.save_as(path)
    assert_valid_dicom(path)
    back = hd.seg.segread(path)
    for number, name in enumerate(MIP_CATEGORIES, start=1):
        desc = back.get_segment_description(number)
        assert (desc.segmented_property_category, desc.segmented_property_type) == MIP_CATEGORY_CODES[name]
        assert desc.segment_label == f"prompt {name}"


def test_rejects_bad_input(data: Path) -> None:
    sources = _read(data, "ct")
    masks = _masks(sources, 2)
    with pytest.raises(ValueError, match="segments"):
        _build(sources, masks, _segments()[:1])
    with pytest.raises(ValueError, match="rows|x"):
        _build(sources, masks[:, :-1], _segments())
    with pytest.raises(ValueError, match="frames"):
        _build(sources, np.concatenate([masks, masks]), _segments())
    with pytest.raises(ValueError, match="binary"):
        _build(sources, masks.astype(np.uint8) * 2, _segments())
    with pytest.raises(ValueError, match="fractional"):
        _build(sources, masks.astype(np.float32) * 2, _segments(), fractional=True)
    with pytest.raises(ValueError, match="transfer syntax"):
        _build(sources, masks, _segments(), transfer_syntax_uid="1.2.840.10008.1.2.4.50")


def test_code_table() -> None:
    assert len(MIP_CATEGORIES) == 16 and set(MIP_CATEGORY_CODES) == set(MIP_CATEGORIES)
    assert codes_for_category("liver") == (ANATOMICAL_STRUCTURE, Code("10200004", "SCT", "Liver"))
    assert codes_for_category("Tumor")[1].value == "108369006"
    assert codes_for_category("infection") == (MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                                               Code("409774005", "SCT", "Inflammation"))
    assert codes_for_category("fluid disturbance")[0] == BODY_SUBSTANCE
    assert codes_for_category("histology structure")[0] == TISSUE
    assert codes_for_category("something new") == (OTHER, OTHER)
    # 3D prompts: keywords, abnormality first, category override
    assert codes_for_prompt("liver")[1].value == "10200004"
    assert codes_for_prompt("liver tumor")[1].value == "108369006"
    assert codes_for_prompt("spleen")[1].value == "78961009"
    assert codes_for_prompt("abdominal aorta")[1].value == "15825003"
    assert codes_for_prompt("lung nodule")[1].value == "27925004"
    assert codes_for_prompt("left kidney") == (ANATOMICAL_STRUCTURE, Code("64033007", "SCT", "Kidney"))
    assert codes_for_prompt("xyz") == (OTHER, OTHER)
    assert codes_for_prompt("spleen", category="other organ")[1].value == "78961009"
    assert codes_for_prompt("xyz", category="tumor") == MIP_CATEGORY_CODES["tumor"]
    assert codes_for_prompt("liver", category="tumor") == MIP_CATEGORY_CODES["tumor"]


def test_every_segment_has_a_display_colour(data: Path, tmp_path: Path) -> None:
    """OHIF asks for RecommendedDisplayCIELabValue; each segment carries one, and two segments differ."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(sorted((data / "ct/chest_ct_5mm_64slices").glob("*.dcm"))[0])
    masks = np.zeros((1, src.Rows, src.Columns, 2), dtype=bool)
    masks[0, 10:20, 10:20, 0] = masks[0, 30:40, 30:40, 1] = True
    seg = build_segmentation(
        source_images=[src], masks=masks,
        segments=[SegmentSpec.from_prompt("liver"), SegmentSpec.from_prompt("kidney")],
        algorithm=AlgorithmInfo(name="MedImageParse", version="v1"),
        series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=9910)
    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    assert len(colours) == 2 and len(set(colours)) == 2 and all(len(c) == 3 for c in colours)
