"""MedImageParse 2D and 3D pipelines through the real HTTP client and the emulator: SEG alignment, voxel for voxel.

The emulator's masks are a deterministic function of the pixels it receives (2D: luminance > 128 >> k for prompt
k; 3D: HU > 0 for CT, > median otherwise). Each test computes the mask it expects directly on the SOURCE pixels
(read with pydicom, not through the node's converters) and compares it with the SEG read back with highdicom,
frame by frame through each frame's referenced source instance.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import highdicom as hd
import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from support.validate import assert_valid_dicom

from converters.parse2d import to_parse_image
from converters.volume import series_to_volume
from converters.volume_header import VolumeError
from converters.volume_mask import mask_on_volume
from node.config import parse_config
from node.models.medimageparse.emulator2d import emulate_masks
from node.emulator.server import EmulatorServer
from node.invoke.client import EndpointClient
from node.models.base import JobContext, JobOutput
from node.models.registry import pipeline_for
from node.models.medimageparse.masks import segment_values
from node.models.medimageparse.pipeline3d import VolumeTooLargeError

CT_DIR = "ct/chest_ct_5mm_64slices"
MR_DIR = "mr/prostate_adc_20slices"


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer("127.0.0.1", 0) as server:
        yield server


def run_pipeline(emulator: EmulatorServer, model: str, paths: list[Path], params: dict) -> JobOutput:
    base = emulator.url.rstrip("/").rsplit("/score", 1)[0]
    cfg = parse_config({"endpoints": {"e": {"model": model, "url": f"{base}/{model}/score", "auth": "none",
                                            "max_attempts": 1}},
                        "rules": [{"name": "r", "endpoint": "e", "params": params}]})
    ctx = JobContext(job={"job_uid": "0123456789abcdef0123456789abcdef", "attempts": 1}, rule=cfg.rules[0],
                     endpoint_name="e", endpoint=cfg.endpoints["e"], client=EndpointClient("e", cfg.endpoints["e"]),
                     instance_paths=list(paths), previous_results=lambda kind: None)
    return pipeline_for(model)(ctx)


def read_back(ds: pydicom.Dataset, tmp: Path, name: str) -> hd.seg.Segmentation:
    """Write, validate with dciodvfy, and read back with highdicom."""
    path = tmp / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    return hd.seg.segread(path)


def frames_by_source(seg: hd.seg.Segmentation, segment: int) -> dict[tuple[str, int], np.ndarray]:
    """{(source SOP Instance UID, 1-based source frame): mask} for one segment, from the SEG's own references."""
    out = {}
    pixels = seg.pixel_array
    if int(seg.NumberOfFrames) == 1:
        pixels = pixels.reshape((1,) + pixels.shape[-2:])
    shared = seg.SharedFunctionalGroupsSequence[0]
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ident = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        if int(ident[0].ReferencedSegmentNumber) != segment:
            continue
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(source.get("ReferencedFrameNumber", 1)) if "ReferencedFrameNumber" in source else 1
        out[(str(source.ReferencedSOPInstanceUID), frame)] = pixels[index]
    return out


# --- 3D --------------------------------------------------------------------------------------------------------------


def test_ct_volume_shuffled_seg_matches_hu_threshold_on_every_source_slice(emulator, data: Path, tmp_path: Path) -> None:
    paths = sorted((data / CT_DIR).glob("*.dcm"))
    assert len(paths) == 64
    random.Random(7).shuffle(paths)
    out = run_pipeline(emulator, "medimageparse3d", paths, {"prompt": "liver"})
    assert out.state == "done", out.outcome
    (kind, ds), = out.results
    seg = read_back(ds, tmp_path, "ct3d")
    assert seg.SegmentSequence[0].SegmentLabel == "liver"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert "EMULATED" in seg.SeriesDescription.upper()
    frames = frames_by_source(seg, 1)
    assert len(frames) == 64
    for path in paths:
        src = pydicom.dcmread(path)
        expected = apply_modality_lut(src.pixel_array, src) > 0  # the emulator's CT rule, on the source pixels
        got = frames[(src.SOPInstanceUID, 1)]
        assert got.shape == (src.Rows, src.Columns)
        assert np.array_equal(got.astype(bool), expected), f"slice {src.InstanceNumber} misaligned"


def test_oblique_mr_volume_matched_series_aligns_with_source_pixels(emulator, data: Path, tmp_path: Path) -> None:
    paths = sorted((data / MR_DIR).glob("*.dcm"))
    random.Random(3).shuffle(paths)
    # The ADC map is DERIVED\SECONDARY: the default selection refuses it; a rule that names it takes it.
    skipped = run_pipeline(emulator, "medimageparse3d", paths, {"prompt": "prostate"})
    assert skipped.state == "skipped" and "DERIVED" in skipped.outcome
    out = run_pipeline(emulator, "medimageparse3d", paths,
                       {"prompt": "prostate & lesion", "series": "matched", "category": "other organ"})
    assert out.state == "done", out.outcome
    seg = read_back(out.results[0][1], tmp_path, "mr3d")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["prostate", "lesion"]
    sources = [pydicom.dcmread(p) for p in paths]
    values = {s.SOPInstanceUID: apply_modality_lut(s.pixel_array, s).astype(np.float64) for s in sources}
    median = float(np.median(np.concatenate([v.ravel() for v in values.values()])))
    # Both prompts went in one call (prompts_per_call, the model card's '&'): the emulator's label map gives each
    # voxel one label, column stripes 8 wide alternating between the prompts (emulator3d.label_map); each segment must
    # be its own stripes of the mask, on its own slice.
    assert [r["payload"][0]["text"]["chars"] for r in emulator.requests[-1:]] == [len("prostate & lesion")]
    columns = np.arange(256)
    for segment in (1, 2):
        frames = frames_by_source(seg, segment)
        assert len(frames) == 20
        mine = ((columns // 8) % 2) == segment - 1
        for uid, pixels in values.items():
            assert np.array_equal(frames[(uid, 1)].astype(bool), (pixels > median) & mine[None, :])


def test_mask_in_another_voxel_order_is_put_back_on_the_request_grid(data: Path) -> None:
    volume = series_to_volume(sorted((data / MR_DIR).glob("*.dcm")))
    rng = np.random.default_rng(0)
    truth = (rng.random(volume.data.shape) > 0.7).astype(np.uint8)
    image = nibabel.Nifti1Image(truth, volume.affine)
    canonical = nibabel.as_closest_canonical(image)
    assert not np.allclose(canonical.affine, volume.affine), "the test needs a real reorientation"
    n0, n2 = canonical.shape[0], canonical.shape[2]
    flip = np.array([[-1, 0, 0, n0 - 1], [0, 1, 0, 0], [0, 0, -1, n2 - 1], [0, 0, 0, 1]], dtype=float)
    flipped = nibabel.Nifti1Image(np.asanyarray(canonical.dataobj)[::-1, :, ::-1].copy(), canonical.affine @ flip)
    for answer in (image, canonical, flipped):
        assert np.array_equal(mask_on_volume(np.asanyarray(answer.dataobj), answer.affine, volume), truth)
    for wrong in (image.slicer[10:, :, 2:], nibabel.Nifti1Image(truth[:, :, :-1], volume.affine)):
        with pytest.raises(VolumeError, match="does not cover"):
            mask_on_volume(np.asanyarray(wrong.dataobj), wrong.affine, volume)


def test_replies_of_the_wrong_shape_fail_the_job_clearly(emulator, data: Path, tmp_path: Path) -> None:
    import base64
    import gzip
    import json

    bad_2d = {"data": base64.b64encode(np.zeros((1, 512, 512), np.uint8).tobytes()).decode(), "shape": [1, 512, 512],
              "dtype": "uint8"}
    emulator.script_faults([{"body": [{"image_features": json.dumps(bad_2d), "text_features": ["liver"]}]}])
    path = _synthetic(tmp_path, 64, 32)
    with pytest.raises(ValueError, match=r"masks of shape \[1, 512, 512\]; expected \[n_prompts, 1024, 1024\]"):
        run_pipeline(emulator, "medimageparse", [path], {"prompt": "liver"})
    paths = sorted((data / MR_DIR).glob("*.dcm"))
    small = nibabel.Nifti1Image(np.zeros((256, 256, 19), np.uint8), series_to_volume(paths).affine)
    nifti = base64.b64encode(gzip.compress(small.to_bytes())).decode()
    emulator.script_faults([{"body": [{"nifti_file": json.dumps({"data": nifti})}]}])
    with pytest.raises(VolumeError, match="does not cover"):
        run_pipeline(emulator, "medimageparse3d", paths, {"prompt": "prostate", "series": "matched"})


def test_volume_over_the_request_limit_is_refused_before_sending(emulator, data: Path) -> None:
    before = len(emulator.requests)
    with pytest.raises(VolumeTooLargeError, match=r"over the endpoint limit of 0\.5 MiB"):
        run_pipeline(emulator, "medimageparse3d", sorted((data / CT_DIR).glob("*.dcm")),
                     {"prompt": "liver", "max_request_mb": 0.5})
    assert len(emulator.requests) == before


# --- 2D --------------------------------------------------------------------------------------------------------------


def _luminance_u8(src: pydicom.Dataset) -> np.ndarray:
    """What the emulator thresholds, computed on the source: 8-bit grey, or ITU-R 601 luminance of RGB."""
    from converters.pixels import to_uint8

    if src.SamplesPerPixel == 3:
        rgb = src.pixel_array.astype(np.float64)
        return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return to_uint8(src).astype(np.float64)


def _synthetic(tmp: Path, rows: int, columns: int, rgb: bool = False) -> Path:
    """An 8-bit image of 0/255 axis-aligned shapes that is asymmetric (an L and an off-centre block)."""
    grey = np.zeros((rows, columns), dtype=np.uint8)
    grey[rows // 8: rows // 2, columns // 6: columns // 6 + max(2, columns // 10)] = 255  # the L's stem
    grey[rows // 2 - max(2, rows // 12): rows // 2, columns // 6: columns // 2] = 255  # the L's foot
    grey[3 * rows // 4: 3 * rows // 4 + rows // 10, 2 * columns // 3: columns - 3] = 255  # a block, bottom right
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "SYNTH^ALIGN", "SYN1", "20260101", "120000"
    ds.Modality, ds.ConversionType, ds.InstanceNumber, ds.SeriesNumber = "OT", "WSD", 1, 1
    ds.PatientOrientation = ""
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = rows, columns, 8, 8, 7, 0
    if rgb:
        colour = np.stack([grey, grey, grey], axis=-1)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.PixelData = colour.tobytes()
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = grey.tobytes()
    path = tmp / f"synthetic_{rows}x{columns}{'_rgb' if rgb else ''}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("rows, columns, rgb", [(256, 128, False), (128, 512, False), (200, 120, True)],
                         ids=["portrait", "landscape", "rgb"])
def test_2d_seg_equals_threshold_on_source_pixels(emulator, tmp_path: Path, rows: int, columns: int,
                                                   rgb: bool) -> None:
    path = _synthetic(tmp_path, rows, columns, rgb)
    out = run_pipeline(emulator, "medimageparse", [path], {"prompt": "lesion"})
    assert out.state == "done", out.outcome
    seg = read_back(out.results[0][1], tmp_path, "seg2d")
    src = pydicom.dcmread(path)
    got = frames_by_source(seg, 1)[(src.SOPInstanceUID, 1)]
    assert got.shape == (rows, columns)
    expected = _luminance_u8(src) > 128
    assert expected.any() and not expected.all()
    assert np.array_equal(got.astype(bool), expected)


@pytest.mark.parametrize("name", ["cxr/cr_pa_mono1_uncompressed.dcm", "other/us_kidney_grey.dcm",
                                  "other/us_rgb_rle.dcm", "cxr/dx_lateral_thorax_veterinary.dcm"],
                         ids=["portrait-cr-mono1", "landscape-us", "rgb-us", "small-upscaled"])
def test_2d_real_images_seg_sits_on_the_source_pixels(emulator, data: Path, tmp_path: Path, name: str) -> None:
    path = tmp_path / Path(name).name
    shutil.copy(data / name, path)
    out = run_pipeline(emulator, "medimageparse", [path], {"prompt": "lung & heart"})
    assert out.state == "done", out.outcome
    seg = read_back(out.results[0][1], tmp_path, "seg2d")
    src = pydicom.dcmread(path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung", "heart"]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == ["39607008", "80891009"]
    # Exactly what the model's masks map back to (the emulator's answer for the PNG we send, inverse transform)...
    sent = to_parse_image(src, prompt="lung heart")
    model_masks, _ = emulate_masks(sent.png, ["lung", "heart"])
    mapped = sent.transform.mask_to_source(model_masks) > 128
    # ...and, on the source pixels themselves, the threshold agrees except where resampling blurs an edge.
    direct = [_luminance_u8(src) > t for t in (128, 64)]
    for segment in (1, 2):
        got = frames_by_source(seg, segment)[(src.SOPInstanceUID, 1)].astype(bool)
        assert got.shape == (src.Rows, src.Columns)
        assert np.array_equal(got, mapped[segment - 1])
        agreement = float(np.mean(got == direct[segment - 1]))
        assert agreement > 0.97, f"segment {segment}: only {agreement:.3%} of pixels agree with the source threshold"


def _enhanced_mr(data: Path, tmp: Path) -> Path:
    """A real multi-frame object with per-frame geometry: the oblique ADC slices as a Legacy Converted Enhanced MR."""
    legacy = [pydicom.dcmread(p) for p in sorted((data / MR_DIR).glob("*.dcm"))]
    for ds in legacy[1:]:  # highdicom wants one orientation; the series is equal within 1e-4
        ds.ImageOrientationPatient = legacy[0].ImageOrientationPatient
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(legacy, generate_uid(), 77, generate_uid(), 1)
    path = tmp / "enhanced_mr.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    return path


def test_2d_multiframe_every_nth_frame_and_empty_unanalysed_frames(emulator, data: Path, tmp_path: Path) -> None:
    path = _enhanced_mr(data, tmp_path)
    src = pydicom.dcmread(path)
    n_frames = int(src.NumberOfFrames)
    out = run_pipeline(emulator, "medimageparse", [path], {"prompt": "prostate", "frames": "every:3"})
    assert out.state == "done", out.outcome
    analysed = list(range(0, n_frames, 3))
    assert f"{len(analysed)} of {n_frames} frames analysed" in out.outcome
    seg = read_back(out.results[0][1], tmp_path, "mf")
    frames = frames_by_source(seg, 1)
    assert sorted(f for _, f in frames) == list(range(1, n_frames + 1))
    from converters.pixels import to_uint8

    for frame in range(n_frames):
        got = frames[(src.SOPInstanceUID, frame + 1)].astype(bool)
        if frame not in analysed:
            assert not got.any(), f"frame {frame + 1} was not analysed and must be empty"
            continue
        sent = to_parse_image(src, frame=frame, prompt="prostate")
        expected = sent.transform.mask_to_source(emulate_masks(sent.png, ["prostate"])[0])[0] > 128
        assert np.array_equal(got, expected)
        assert np.mean(got == (to_uint8(src, frame) > 128)) > 0.95


def test_2d_multiframe_without_frame_geometry_fails_clearly(emulator, data: Path, tmp_path: Path) -> None:
    path = tmp_path / "emri.dcm"
    shutil.copy(data / "mr/enhanced_mr_10frames_small.dcm", path)  # Enhanced MR without functional groups
    with pytest.raises(ValueError, match="no segmentation could be written.*no SEG written"):
        run_pipeline(emulator, "medimageparse", [path], {"prompt": "brain", "frames": "all"})


def test_2d_series_frames_by_instance_number_and_rule_ct_window(emulator, data: Path, tmp_path: Path) -> None:
    paths = sorted((data / CT_DIR).glob("*.dcm"))
    random.Random(1).shuffle(paths)
    out = run_pipeline(emulator, "medimageparse", paths,
                       {"prompt": "lung nodule", "frames": "instances:10,40", "window": [-1500, 500]})
    assert out.state == "done", out.outcome
    seg = read_back(out.results[0][1], tmp_path, "ct2d")
    frames = frames_by_source(seg, 1)
    by_number = {int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber): p for p in paths}
    assert {uid for uid, _ in frames} == {pydicom.dcmread(by_number[n], stop_before_pixels=True).SOPInstanceUID
                                           for n in (10, 40)}
    for n in (10, 40):
        src = pydicom.dcmread(by_number[n])
        hu = apply_modality_lut(src.pixel_array, src).astype(np.float64)
        # The rule's window (-1500..500 HU, not the prompt's lung window) puts 8-bit 128 at -496 HU: air vs body.
        got = frames[(src.SOPInstanceUID, 1)].astype(bool)
        assert np.mean(got == (hu > -1500 + 2000 * 128 / 255)) > 0.99  # lung parenchyma sits near -500


def test_segment_values_binary_and_fractional() -> None:
    hard = np.array([0, 255, 255, 0], dtype=np.uint8)
    assert segment_values(hard)[1] is False and segment_values(hard)[0].tolist() == [False, True, True, False]
    soft = np.array([0, 100, 200, 255], dtype=np.uint8)
    values, fractional = segment_values(soft)
    assert fractional and values.tolist() == pytest.approx([0, 100 / 255, 200 / 255, 1])
    values, fractional = segment_values(soft, mode="binary", threshold=128 / 255)
    assert not fractional and values.tolist() == [False, False, True, True]
    assert segment_values(np.array([0.0, 0.2, 1.0]))[1] is True
    assert segment_values(np.array([0, 1], dtype=np.uint8))[0].tolist() == [False, True]
    with pytest.raises(ValueError, match="expected 0..1 or 0..255"):
        segment_values(np.array([-1.0, 3.0]))
