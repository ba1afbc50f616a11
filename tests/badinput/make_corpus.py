"""Write the bad-input corpus: small broken DICOM files derived from the real ones in ``../shared/data``.

``python tests/badinput/make_corpus.py OUT_DIR`` writes it by hand; the tests call :func:`build_corpus` into a
temporary folder (nothing generated is committed). Each case is one study (fresh UIDs) labelled as a chest
radiograph, so that the node's routing rule sends it down the conversion path unless the receive checks stop
it first, and says what the node must do with it:

* ``quarantine``: refused at C-STORE, kept in quarantine with the reason (``words``);
* ``failed`` / ``skipped``: stored, but its job ends with that state and the reason (``words``);
* ``no_rule``: stored, no rule matches (a non-image object honestly labelled): the study is done, no job;
* ``one_instance``: duplicate SOP Instance UIDs: one instance kept, the study processed once;
* ``aborted``: the C-STORE request itself lacks its (required) Affected SOP Instance UID, because the data set
  has none: pynetdicom aborts that association; nothing is stored, the node goes on.

The raw bytes of every file are sent as they are (pynetdicom ``send_c_store(path)`` streams the file without
decoding it), so the node sees exactly the damage.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid


@dataclass
class Case:
    name: str
    files: list[Path]
    expect: str  # quarantine | failed | skipped | no_rule | one_instance
    words: str = ""
    study_uid: str = ""
    sop_uids: list[str] = field(default_factory=list)


def _chest(src: Path, *, study_uid: str, patient_id: str, view: str = "PA") -> Dataset:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = f"BAD^{patient_id}"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.preamble = b"\0" * 128  # written with the DICM prefix and file meta even when the data set is broken
    ds.save_as(path, enforce_file_format=False)
    return path


def build_corpus(out: Path, data: Path) -> list[Case]:
    """Write every case under ``out`` and describe it."""
    base = data / "cxr" / "dx_lateral_thorax_veterinary.dcm"  # small (169x211, 8 bit, uncompressed)
    cases: list[Case] = []

    def case(name: str, expect: str, words: str = "") -> tuple[Case, str, Path]:
        c = Case(name, [], expect, words, study_uid=generate_uid())
        cases.append(c)
        return c, c.study_uid, out / name

    # truncated in the middle of the header (after the UIDs of group 0008, before the study's group 0020)
    c, study, d = case("truncated_header", "quarantine", "not a valid UID")
    ds = _chest(base, study_uid=study, patient_id="BAD-01")
    full = _save(ds, d / "full.dcm").read_bytes()
    cut = full.find(b"\x20\x00\x0d\x00")  # (0020,000D) StudyInstanceUID
    (d / "full.dcm").unlink()
    (d / "0.dcm").write_bytes(full[:cut - 7])
    c.files, c.sop_uids = [d / "0.dcm"], [ds.SOPInstanceUID]

    # the pixel data are cut short: the header is whole, conversion must fail
    c, study, d = case("truncated_pixels", "failed", "")
    ds = _chest(base, study_uid=study, patient_id="BAD-02")
    blob = _save(ds, d / "0.dcm").read_bytes()
    (d / "0.dcm").write_bytes(blob[: len(blob) - 20000])
    c.files = [d / "0.dcm"]

    # JPEG baseline transfer syntax whose fragment is not a JPEG stream
    c, study, d = case("undecodable_pixels", "failed", "")
    ds = _chest(base, study_uid=study, patient_id="BAD-03")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"\x00garbage" * 100])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    c.files = [_save(ds, d / "0.dcm")]

    # Rows written with a wrong VR and a 3-byte value (explicit VR: the bytes say "US" but hold nonsense)
    c, study, d = case("wrong_vr_rows", "skipped", "not readable as DICOM")
    ds = _chest(base, study_uid=study, patient_id="BAD-04")
    del ds.Rows
    ds[Tag(0x00280010)] = RawDataElement(Tag(0x00280010), "US", 3, b"\x01\x02\x03", 0, False, True)
    c.files = [_save(ds, d / "0.dcm")]

    # Modality written as binary (wrong VR): the routing rules read Modality
    c, study, d = case("wrong_vr_modality", "no_rule", "")
    ds = _chest(base, study_uid=study, patient_id="BAD-05")
    del ds.Modality
    ds[Tag(0x00080060)] = RawDataElement(Tag(0x00080060), "US", 2, b"\xff\xfe", 0, False, True)
    c.files = [_save(ds, d / "0.dcm")]

    # empty Study Instance UID
    c, study, d = case("empty_study_uid", "quarantine", "StudyInstanceUID is missing or not a valid UID")
    ds = _chest(base, study_uid=study, patient_id="BAD-06")
    ds.StudyInstanceUID = ""
    c.files, c.sop_uids = [_save(ds, d / "0.dcm")], [ds.SOPInstanceUID]

    # two different images with the same SOP Instance UID (the second replaces the first)
    c, study, d = case("duplicate_sop_uid", "one_instance", "")
    a = _chest(data / "cxr" / "cr_pa_jpeg_baseline.dcm", study_uid=study, patient_id="BAD-07")
    b = _chest(base, study_uid=study, patient_id="BAD-07", view="LL")
    b.SOPInstanceUID = a.SOPInstanceUID
    b.file_meta.MediaStorageSOPInstanceUID = a.SOPInstanceUID
    c.files, c.sop_uids = [_save(b, d / "0.dcm"), _save(a, d / "1.dcm")], [a.SOPInstanceUID]

    # huge Rows/Columns (65535 x 65535 would be 4 GiB) over 36 KB of pixels
    c, study, d = case("huge_rows_columns", "failed", "")
    ds = _chest(base, study_uid=study, patient_id="BAD-08")
    ds.Rows, ds.Columns = 65535, 65535
    c.files = [_save(ds, d / "0.dcm")]

    # zero Rows/Columns
    c, study, d = case("zero_rows_columns", "skipped", "no frontal chest image")
    ds = _chest(base, study_uid=study, patient_id="BAD-09")
    ds.Rows, ds.Columns = 0, 0
    c.files = [_save(ds, d / "0.dcm")]

    # a non-image object honestly labelled: a Basic Text SR
    c, study, d = case("structured_report", "no_rule", "")
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = generate_uid()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.StudyInstanceUID, sr.SeriesInstanceUID = study, generate_uid()
    sr.Modality, sr.PatientID, sr.PatientName, sr.BodyPartExamined = "SR", "BAD-10", "BAD^10", "CHEST"
    sr.ValueType, sr.ContinuityOfContent = "CONTAINER", "SEPARATE"
    sr.ConceptNameCodeSequence = [Dataset()]
    sr.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    sr.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    sr.ConceptNameCodeSequence[0].CodeMeaning = "Diagnostic imaging report"
    c.files = [_save(sr, d / "0.dcm")]

    # an encapsulated PDF that claims to be a chest radiograph (Modality DX, ViewPosition PA)
    c, study, d = case("pdf_labelled_dx", "skipped", "no frontal chest image")
    pdf = Dataset()
    pdf.file_meta = FileMetaDataset()
    pdf.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.SOPInstanceUID = generate_uid()
    pdf.file_meta.MediaStorageSOPClassUID = pdf.SOPClassUID
    pdf.file_meta.MediaStorageSOPInstanceUID = pdf.SOPInstanceUID
    pdf.StudyInstanceUID, pdf.SeriesInstanceUID = study, generate_uid()
    pdf.Modality, pdf.PatientID, pdf.PatientName = "DX", "BAD-11", "BAD^11"
    pdf.BodyPartExamined, pdf.ViewPosition = "CHEST", "PA"
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    c.files = [_save(pdf, d / "0.dcm")]

    # one study, two patients (a frontal of one, a lateral of another)
    c, study, d = case("mixed_patients", "failed", "mixes 2 patients")
    a = _chest(data / "cxr" / "cr_pa_jpeg_baseline.dcm", study_uid=study, patient_id="BAD-12A")
    b = _chest(base, study_uid=study, patient_id="BAD-12B", view="LL")
    c.files = [_save(a, d / "0.dcm"), _save(b, d / "1.dcm")]

    # the shared bad files, relabelled as chest radiographs so that they reach the converter
    # (the broken sequence of bad_sequence.dcm is repaired by pydicom on rewriting: it is sent as it is below)
    for name in ("mr_truncated_pixeldata", "mr_12bit_jpeg_extended_undecodable"):
        c, study, d = case(f"shared_{name}", "failed", "cannot be decoded")
        ds = _chest(data / "bad" / f"{name}.dcm", study_uid=study, patient_id=f"BAD-{name[:8]}")
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        c.files = [_save(ds, d / "0.dcm")]

    # ... and as they are (a CT whose UIDs are not UIDs; two MR images no rule routes)
    c, _, _ = case("shared_bad_sequence_original", "quarantine", "not a valid UID")
    c.files = [data / "bad" / "bad_sequence.dcm"]
    c.study_uid = str(pydicom.dcmread(c.files[0], stop_before_pixels=True).StudyInstanceUID)
    for name in ("mr_truncated_pixeldata", "mr_12bit_jpeg_extended_undecodable"):
        c, _, _ = case(f"shared_{name}_original", "no_rule", "")
        c.files = [data / "bad" / f"{name}.dcm"]
        c.study_uid = str(pydicom.dcmread(c.files[0], stop_before_pixels=True).StudyInstanceUID)

    # a real CT series whose SOP Class, SOP, Study and Series Instance UIDs are empty in the data set. No sender
    # proposes an empty SOP Class, so it is filled from the file meta; the instance UIDs stay empty.
    c, _, d = case("shared_ct_empty_uids", "aborted", "")
    for src in sorted((data / "ct" / "ct_j2k_20slices_empty_uids").glob("*.dcm")):
        ds = pydicom.dcmread(src)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        c.files.append(_save(ds, d / src.name))
    return cases


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "badinput-corpus")
    data_root = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[3] / "shared" / "data"
    for c in build_corpus(target, data_root):
        print(f"{c.name:<40} {c.expect:<12} {', '.join(str(f) for f in c.files)}")
