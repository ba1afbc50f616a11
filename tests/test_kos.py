"""The IOCM rejection note writer (dicom_out/kos.py): title codes, references, its own series, dciodvfy-clean."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_out.kos import build_rejection_note
from support.validate import assert_valid_dicom

# IHE IOCM (RAD TF-3 / DICOM CID 7011): the rejection titles, written here from the standard, not from the code
TITLES = {"quality": ("113001", "Rejected for Quality Reasons"),
          "safety": ("113037", "Rejected for Patient Safety Reasons"),
          "incorrect-worklist": ("113038", "Incorrect Modality Worklist Entry")}


@pytest.mark.parametrize("reason", sorted(TITLES))
def test_rejection_note(tmp_path: Path, data: Path, reason: str) -> None:
    sr = pydicom.dcmread(data / "reference" / "highdicom_sr_tid1500.dcm")
    note = build_rejection_note([sr], reason, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    path = tmp_path / "kos.dcm"
    note.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    title = back.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (TITLES[reason][0], "DCM",
                                                                                  TITLES[reason][1])
    assert back.StudyInstanceUID == sr.StudyInstanceUID
    assert back.SeriesInstanceUID != sr.SeriesInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    refs = [(s.SeriesInstanceUID, i.ReferencedSOPInstanceUID) for s in evidence.ReferencedSeriesSequence
            for i in s.ReferencedSOPSequence]
    assert refs == [(sr.SeriesInstanceUID, sr.SOPInstanceUID)]


def test_rejection_note_refuses_bad_input(data: Path) -> None:
    sr = pydicom.dcmread(data / "reference" / "highdicom_sr_tid1500.dcm")
    seg = pydicom.dcmread(data / "reference" / "highdicom_seg_on_cr.dcm")
    kw = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    with pytest.raises(ValueError, match="allowed"):
        build_rejection_note([sr], "boring", **kw)
    with pytest.raises(ValueError, match="at least one"):
        build_rejection_note([], "quality", **kw)
    assert sr.StudyInstanceUID != seg.StudyInstanceUID
    with pytest.raises(ValueError, match="2 studies"):
        build_rejection_note([sr, seg], "quality", **kw)
