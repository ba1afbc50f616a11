"""converters.pixels.to_uint8 on real files (data fixture) and on tiny synthetic datasets with known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_windowing, convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from converters.pixels import PixelConversionError, to_uint8

COMPRESSED = ["J2KR", "JLSL", "JPLL", "RLE"]


def synthetic(values: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 16, **attributes) -> Dataset:
    """A minimal uncompressed single- or multi-frame image holding ``values`` (unsigned 16-bit or 8-bit)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Secret^Patient"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 3 if photometric in ("RGB", "YBR_FULL") else 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    frames = values.shape[0] if values.ndim == 3 and ds.SamplesPerPixel == 1 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = values.shape[-3:-1] if ds.SamplesPerPixel == 3 else values.shape[-2:]
    ds.BitsAllocated = 8 if values.dtype == np.uint8 else 16
    ds.BitsStored = min(bits_stored, ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(values).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def reference_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR to 0..255, written out independently in float64."""
    y = ((x.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.clip(y, 0, 255))


def reference_percentiles(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x.astype(np.float64), [0.5, 99.5])
    return np.rint(np.clip((x - lo) / (hi - lo), 0, 1) * 255)


# --- MONOCHROME1 -----------------------------------------------------------------------------------------------------


def test_monochrome1_synthetic_exact_values_with_rescale_and_window() -> None:
    # Window 128/256 is the identity on 0..255 (PS3.3 LINEAR), so the expected values can be read off by hand.
    stored = np.array([[5, 10, 69], [200, 1000, 0]], dtype=np.uint16)  # x = 2 * stored - 10
    common = dict(WindowCenter=128, WindowWidth=256, RescaleSlope=2, RescaleIntercept=-10)
    mono2 = to_uint8(synthetic(stored, "MONOCHROME2", 12, **common))
    mono1 = to_uint8(synthetic(stored, "MONOCHROME1", 12, **common))
    assert mono2.dtype == np.uint8 and mono2.shape == (2, 3)
    assert mono2.tolist() == [[0, 10, 128], [255, 255, 0]]
    assert mono1.tolist() == [[255, 245, 127], [0, 0, 255]]


def test_monochrome1_real_cr_is_inverted_window(data: Path) -> None:
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = to_uint8(ds)
    assert out.shape == (1955, 1841) and out.dtype == np.uint8
    expected = 255 - reference_window(ds.pixel_array, 15000, 30000)
    # float32 in the converter, float64 here: at most a rounding step apart, and nearly always identical.
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert np.mean(out == expected) > 0.999
    # Dense (high stored value in MONOCHROME1) is displayed white after the inversion... i.e. low stored = bright.
    raw = ds.pixel_array
    assert out[raw == raw.min()].min() > out[raw == raw.max()].max()


def test_monochrome1_8bit_real_dx_identity_window(data: Path) -> None:
    # The veterinary DX: MONOCHROME1, 8-bit, window 128/256 (identity), slope 1, intercept 0.
    ds = pydicom.dcmread(data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    np.testing.assert_array_equal(to_uint8(ds), 255 - ds.pixel_array)


def test_j2k_lossless_cr_equals_uncompressed(data: Path) -> None:
    plain = to_uint8(pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm"))
    j2k_ds = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_j2k_lossless.dcm")
    assert j2k_ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    np.testing.assert_array_equal(to_uint8(j2k_ds), plain)


# --- VOI -------------------------------------------------------------------------------------------------------------


def voi_lut(descriptor: list[int], data: list[int]) -> Sequence:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return Sequence([item])


def test_voi_lut_sequence_wins_over_window() -> None:
    stored = np.array([[0, 10, 11], [12, 13, 50]], dtype=np.uint16)
    ds = synthetic(stored, bits_stored=12, VOILUTSequence=voi_lut([4, 10, 8], [0, 100, 200, 255]),
                   WindowCenter=1000, WindowWidth=10)
    # Below the first mapped value -> first entry; above the last -> last entry.
    assert to_uint8(ds).tolist() == [[0, 0, 100], [200, 255, 255]]


def test_voi_lut_sequence_16_bit_entries_and_underfilled_lut() -> None:
    stored = np.array([[0, 1, 2]], dtype=np.uint16)
    full = synthetic(stored, VOILUTSequence=voi_lut([3, 0, 16], [0, 32768, 65535]))
    assert to_uint8(full).tolist() == [[0, 128, 255]]
    # Declared 16 bits per entry but filled with 12-bit values: scaled by the range actually used.
    underfilled = synthetic(stored, VOILUTSequence=voi_lut([3, 0, 16], [0, 2048, 4095]))
    assert to_uint8(underfilled).tolist() == [[0, 128, 255]]


def test_voi_lut_sequence_after_rescale_and_monochrome1() -> None:
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)  # x = stored + 10 -> LUT index 0..3
    ds = synthetic(stored, "MONOCHROME1", RescaleSlope=1, RescaleIntercept=10,
                   VOILUTSequence=voi_lut([4, 10, 8], [0, 100, 200, 255]))
    assert to_uint8(ds).tolist() == [[255, 155, 55, 0]]


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(function: str) -> None:
    # With 8 unsigned bits stored and no rescale, pydicom's apply_windowing outputs 0..255 too: same scale.
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ds = synthetic(stored, bits_stored=8, WindowCenter=[90, 10], WindowWidth=[60, 5], VOILUTFunction=function)
    expected = np.rint(apply_windowing(stored.astype(np.float64), ds))  # first window, as in to_uint8
    out = to_uint8(ds).astype(int)
    assert np.abs(out - expected).max() <= 1
    assert np.mean(out == expected) > 0.98


def test_sigmoid_window_exact_points() -> None:
    stored = np.array([[50, 100, 150]], dtype=np.uint16)
    ds = synthetic(stored, WindowCenter=100, WindowWidth=50, VOILUTFunction="SIGMOID")
    # 255 / (1 + exp(-4 (x - c) / w)): 4.58, 127.5 (rounds to even 128), 250.42
    assert to_uint8(ds).tolist() == [[5, 128, 250]]


def test_percentiles_when_no_window() -> None:
    stored = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = to_uint8(synthetic(stored))
    np.testing.assert_array_equal(out, reference_percentiles(stored))
    assert out.min() == 0 and out.max() == 255
    assert (out[stored <= 4] == 0).all() and (out[stored >= 995] == 255).all()


def test_constant_image_is_black_not_an_error() -> None:
    assert (to_uint8(synthetic(np.full((4, 4), 7, dtype=np.uint16))) == 0).all()


def test_unusable_window_falls_back_to_percentiles() -> None:
    stored = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = to_uint8(synthetic(stored, WindowCenter=500, WindowWidth=0))
    np.testing.assert_array_equal(out, reference_percentiles(stored))


# --- decoding --------------------------------------------------------------------------------------------------------


def test_jpeg_baseline_cr(data: Path) -> None:
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_jpeg_baseline.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    out = to_uint8(ds)
    assert out.shape == (1024, 1024) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference_percentiles(ds.pixel_array)).max() <= 1


@pytest.mark.parametrize("image", ["CT1", "MR1"])
@pytest.mark.parametrize("syntax", COMPRESSED)
def test_compressed_equals_uncompressed(data: Path, image: str, syntax: str) -> None:
    plain = to_uint8(pydicom.dcmread(data / "compressed" / f"{image}_UNC.dcm"))
    compressed = pydicom.dcmread(data / "compressed" / f"{image}_{syntax}.dcm")
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(to_uint8(compressed), plain)


def test_mr_uses_its_window_and_ct_its_percentiles(data: Path) -> None:
    mr = pydicom.dcmread(data / "compressed" / "MR1_UNC.dcm")  # window 600/1600
    assert np.abs(to_uint8(mr).astype(int) - reference_window(mr.pixel_array, 600, 1600)).max() <= 1
    ct = pydicom.dcmread(data / "compressed" / "CT1_UNC.dcm")  # no window: percentiles of HU
    hu = ct.pixel_array.astype(np.float64) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert np.abs(to_uint8(ct).astype(int) - reference_percentiles(hu)).max() <= 1


@pytest.mark.parametrize("name", ["mr_12bit_jpeg_extended_undecodable.dcm", "mr_truncated_pixeldata.dcm"])
def test_bad_pixel_data_raises_pixel_conversion_error(data: Path, name: str) -> None:
    ds = pydicom.dcmread(data / "bad" / name)
    with pytest.raises(PixelConversionError) as caught:
        to_uint8(ds)
    message = str(caught.value)
    assert ds.SOPInstanceUID in message
    assert str(ds.PatientName) not in message
    assert isinstance(caught.value, ValueError)


def test_header_only_dataset_raises(data: Path) -> None:
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_jpeg_baseline.dcm", stop_before_pixels=True)
    with pytest.raises(PixelConversionError, match="no Pixel Data"):
        to_uint8(ds)


def test_zero_rows_raises_without_naming_the_patient() -> None:
    ds = synthetic(np.zeros((2, 2), dtype=np.uint16))
    ds.Rows = 0
    with pytest.raises(PixelConversionError, match="Rows=0") as caught:
        to_uint8(ds)
    assert "Secret" not in str(caught.value) and ds.SOPInstanceUID in str(caught.value)


def test_missing_transfer_syntax_raises() -> None:
    ds = synthetic(np.zeros((2, 2), dtype=np.uint16))
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(PixelConversionError, match="Transfer Syntax"):
        to_uint8(ds)


# --- frames and colour -----------------------------------------------------------------------------------------------


def test_multiframe_picks_the_frame(data: Path) -> None:
    ds = pydicom.dcmread(data / "mr" / "enhanced_mr_10frames_small.dcm")
    frames = ds.pixel_array
    for index in (0, 3, 9):
        out = to_uint8(ds, frame=index)
        assert out.shape == (ds.Rows, ds.Columns)
        assert np.abs(out.astype(int) - reference_percentiles(frames[index])).max() <= 1
    with pytest.raises(PixelConversionError, match="frame 10"):
        to_uint8(ds, frame=10)


def test_functional_group_window_per_frame_over_shared() -> None:
    stored = np.stack([np.array([[0, 100, 255]], dtype=np.uint16)] * 2)
    ds = synthetic(stored)

    def group(center: float, width: float) -> Dataset:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        return item

    ds.SharedFunctionalGroupsSequence = Sequence([group(128, 256)])  # identity on 0..255
    per_frame_1 = group(101, 1)  # width 1 is a threshold at center - 0.5 (PS3.3 LINEAR)
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset(), per_frame_1])
    assert to_uint8(ds, frame=0).tolist() == [[0, 100, 255]]
    assert to_uint8(ds, frame=1).tolist() == [[0, 0, 255]]


def test_rgb_becomes_luma(data: Path) -> None:
    ds = pydicom.dcmread(data / "other" / "us_rgb_rle.dcm")
    rgb = ds.pixel_array.astype(np.float64)
    expected = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    out = to_uint8(ds)
    assert out.shape == (ds.Rows, ds.Columns)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_ybr_full_is_converted_to_rgb_first() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [200, 200, 200]]], dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = to_uint8(synthetic(ybr, "YBR_FULL", 8))
    expected = np.rint(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    assert np.abs(out.astype(int) - expected).max() <= 2  # the YBR round trip itself is lossy by a step
