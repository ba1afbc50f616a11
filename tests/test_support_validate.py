"""The validator every DICOM-writing test relies on (``support.validate.assert_valid_dicom``, dicom3tools'
dciodvfy) must fail a file it cannot read, not only one it reads and finds wrong."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.validate import assert_valid_dicom


def a_valid_sr(tmp_path: Path, data: Path) -> Path:
    from dicom_out.algorithm import AlgorithmInfo
    from dicom_out.sr import GroundedFinding, build_findings_sr

    frontal = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm", stop_before_pixels=True)
    sr = build_findings_sr(frontal=frontal, evidence=[frontal],
                           findings=[GroundedFinding("A finding.", ((10.0, 20.0, 30.0, 40.0),))],
                           algorithm=AlgorithmInfo("CXRReportGen", "test"), series_instance_uid=generate_uid(),
                           sop_instance_uid=generate_uid(), series_number=901)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_a_valid_object_passes(tmp_path: Path, data: Path) -> None:
    assert_valid_dicom(a_valid_sr(tmp_path, data))


def test_a_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="File open for read failed"):
        assert_valid_dicom(tmp_path / "never-written.dcm")


def test_a_folder_instead_of_a_file_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        assert_valid_dicom(tmp_path)


@pytest.mark.parametrize("cut", [0, 128, 600])
def test_an_empty_or_truncated_file_fails(tmp_path: Path, data: Path, cut: int) -> None:
    whole = a_valid_sr(tmp_path, data).read_bytes()
    path = tmp_path / f"cut-{cut}.dcm"
    path.write_bytes(whole[:cut])
    with pytest.raises(AssertionError):
        assert_valid_dicom(path)


def test_a_readable_object_with_an_error_fails(tmp_path: Path, data: Path) -> None:
    ds = pydicom.dcmread(a_valid_sr(tmp_path, data))
    del ds.Modality  # Type 1 in the SR Document Series module
    path = tmp_path / "no-modality.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(AssertionError, match="Modality"):
        assert_valid_dicom(path)
