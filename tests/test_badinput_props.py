"""Bad input, property-based (hypothesis): the parsing and conversion entry points let only their documented
exception types escape, whatever they are given.

* ``converters.pixels.to_uint8``: any header/pixel combination -> a uint8 (Rows, Columns) array or
  ``PixelConversionError``;
* ``converters.cxr_select.read_header`` / ``converters.cxr.build_cxr_inputs``: a real file with bytes flipped, inserted or cut ->
  ``InvalidDicomError``/``OSError``/``ValueError``/``EOFError`` for the header, ``NoFrontalView``/
  ``PixelConversionError`` (ValueError) for the inputs;
* ``converters.volume.series_to_volume``: real CT slices with geometry and size attributes changed ->
  a volume or ``VolumeError``;
* ``node.invoke.{cxrreportgen,medimageparse,medimageparse3d}.parse_response``: any JSON -> a result or
  ``ValueError``;
* the receive path's checks: ``is_valid_uid`` is a bool for any value, ``Spool.instance_path`` raises only
  ``ValueError`` and never leaves the spool.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from support.data import data_dir

pytestmark = pytest.mark.badinput

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


# --- pixels -------------------------------------------------------------------------------------------------

@st.composite
def pixel_datasets(draw) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Rows = draw(st.sampled_from([0, 1, 2, 7, 16, 65535]))
    ds.Columns = draw(st.sampled_from([0, 1, 3, 16, 65535]))
    ds.BitsAllocated = draw(st.sampled_from([1, 8, 16, 32, 12]))
    ds.BitsStored = draw(st.integers(0, 33))
    ds.HighBit = draw(st.integers(0, 33))
    ds.PixelRepresentation = draw(st.sampled_from([0, 1, 2]))
    ds.SamplesPerPixel = draw(st.sampled_from([1, 3, 0]))
    ds.PhotometricInterpretation = draw(st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "BOGUS"]))
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = draw(st.sampled_from([0, 1]))
    if draw(st.booleans()):
        ds.NumberOfFrames = draw(st.sampled_from([0, 1, 2, 1000]))
    expected = ds.Rows * ds.Columns * max(1, ds.BitsAllocated // 8) * max(1, ds.SamplesPerPixel)
    n = draw(st.sampled_from([0, 1, 17, min(expected, 4096)]))
    ds.PixelData = draw(st.binary(min_size=n, max_size=n))
    for kw in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if draw(st.booleans()):
            setattr(ds, kw, draw(st.sampled_from([0, 1, -1, 1e30, -1e30, 0.5, 4096])))
    if draw(st.booleans()):
        ds.VOILUTFunction = draw(st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "WHATEVER"]))
    return ds


@SETTINGS
@given(pixel_datasets())
def test_to_uint8_returns_an_image_or_raises_pixel_conversion_error(ds: Dataset) -> None:
    from converters.pixels import PixelConversionError, to_uint8

    try:
        out = to_uint8(ds)
    except PixelConversionError:
        return
    assert out.dtype == np.uint8 and out.shape == (ds.Rows, ds.Columns)


# --- headers and chest X-ray inputs from mutated real files -------------------------------------------------

_CXR_BYTES: bytes | None = None


def cxr_bytes() -> bytes:
    global _CXR_BYTES
    if _CXR_BYTES is None:
        ds = pydicom.dcmread(data_dir() / "cxr" / "dx_lateral_thorax_veterinary.dcm")
        ds.ViewPosition = "PA"
        ds.BodyPartExamined = "CHEST"
        import io

        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        _CXR_BYTES = buf.getvalue()
    return _CXR_BYTES


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(cxr_bytes())
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "zero_run"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[pos:pos + 8] = b"\xff" * 8
        if not data:
            break
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_read_header_and_build_cxr_inputs_raise_only_documented_errors(blob: bytes) -> None:
    from converters.cxr import NoFrontalView, build_cxr_inputs
    from converters.cxr_select import read_header
    from converters.pixels import PixelConversionError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.dcm"
        path.write_bytes(blob)
        try:
            read_header(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            pass
        try:
            inputs = build_cxr_inputs([path])
        except (NoFrontalView, PixelConversionError):
            return
        assert inputs.frontal.png[:8] == b"\x89PNG\r\n\x1a\n"


# --- volumes ------------------------------------------------------------------------------------------------

_CT: list[Dataset] | None = None


def ct_slices() -> list[Dataset]:
    global _CT
    if _CT is None:
        files = sorted((data_dir() / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[:3]
        _CT = [pydicom.dcmread(f) for f in files]
    return _CT


@SETTINGS
@given(st.data())
def test_series_to_volume_returns_a_volume_or_raises_volume_error(data) -> None:
    from converters.volume import series_to_volume
    from converters.volume_header import VolumeError

    slices = [ds.copy() for ds in ct_slices()]
    for ds in slices:
        for _ in range(data.draw(st.integers(0, 2))):
            kw = data.draw(st.sampled_from(["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                            "Rows", "SeriesInstanceUID", "SliceThickness", "RescaleSlope"]))
            value = data.draw(st.sampled_from(["drop", "zero", "nan", "swap"]))
            if value == "drop":
                if kw in ds:
                    delattr(ds, kw)
            elif kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
                n = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}[kw]
                fill = {"zero": 0.0, "nan": float("nan"), "swap": 1.0}[value]
                setattr(ds, kw, [fill] * n)
            elif kw == "Rows":
                ds.Rows = {"zero": 0, "nan": 1, "swap": 256}[value]
            elif kw == "SeriesInstanceUID":
                ds.SeriesInstanceUID = "" if value == "zero" else generate_uid()
            else:
                setattr(ds, kw, {"zero": 0, "nan": float("nan"), "swap": -1}[value])
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, ds in enumerate(slices):
            p = Path(tmp) / f"{i}.dcm"
            ds.save_as(p, enforce_file_format=False)
            paths.append(p)
        try:
            vol = series_to_volume(paths)
        except VolumeError:
            return
    assert vol is not None


# --- endpoint replies ---------------------------------------------------------------------------------------

@SETTINGS
@given(json_values)
def test_cxrreportgen_parse_response_raises_only_value_error(body) -> None:
    from node.models.cxrreportgen.contract import parse_response

    try:
        findings = parse_response(body)
    except ValueError:
        return
    assert isinstance(findings, list)


@st.composite
def parse_replies(draw):
    """MedImageParse-like rows whose masks may have the wrong shape, dtype or byte count."""
    shape = draw(st.lists(st.integers(0, 1025), min_size=0, max_size=4))
    dtype = draw(st.sampled_from(["uint8", "bool", "float32", "int64", "nonsense"]))
    n = draw(st.sampled_from([0, 1, 16]))
    features = {"data": base64.b64encode(b"\x01" * n).decode(), "shape": shape, "dtype": dtype}
    if draw(st.booleans()):
        features = json.dumps(features)
    row = {"image_features": features, "text_features": draw(st.sampled_from(['["liver"]', ["liver"], 7, None]))}
    return draw(st.sampled_from([[row], row, {"rows": [row]}, [row, row], json.dumps([row])]))


@SETTINGS
@given(parse_replies() | json_values)
def test_medimageparse_parse_response_raises_only_value_error(body) -> None:
    from node.models.medimageparse.contract2d import parse_response

    try:
        parse_response(body, n_prompts=1, n_images=1)
    except ValueError:
        pass


def test_medimageparse_mask_of_the_wrong_shape_is_a_clear_error() -> None:
    from node.models.medimageparse.contract2d import parse_response

    row = {"image_features": json.dumps({"data": base64.b64encode(bytes(64 * 64)).decode(), "shape": [1, 64, 64],
                                         "dtype": "uint8"}), "text_features": '["liver"]'}
    with pytest.raises(ValueError, match="shape"):
        parse_response([row], n_prompts=1, n_images=1)


@SETTINGS
@given(json_values | st.builds(lambda s: [{"nifti_file": json.dumps({"data": s})}],
                               st.text(alphabet="ABCDEFGHabcdefgh0123456789+/=", max_size=64)))
def test_medimageparse3d_parse_response_raises_only_value_error(body) -> None:
    from node.models.medimageparse.contract3d import parse_response

    try:
        parse_response(body)
    except ValueError:
        pass


# --- the receive path's checks ------------------------------------------------------------------------------

@SETTINGS
@given(st.one_of(st.text(max_size=80), st.none(), st.integers(), st.binary(max_size=10)))
def test_uid_checks_never_raise_and_paths_stay_in_the_spool(value) -> None:
    from node.store.spool import Spool, is_valid_uid

    ok = is_valid_uid(value)
    assert isinstance(ok, bool)
    spool = Spool(Path("/nonexistent/var"))
    try:
        path = spool.instance_path(value, "1.2", "1.2.3")  # type: ignore[arg-type]
    except ValueError:
        assert not ok
        return
    assert ok and path.resolve().is_relative_to(spool.instances.resolve())
