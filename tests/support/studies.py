"""Test studies built from real images, with fresh UIDs (the data README asks for this).

``derive_cxr_study``: a chest X-ray study (frontal, optional lateral) of one patient; ``copy_series``: copies
of real series as one new study; ``make_prior_study``: a prior chest X-ray study for the priors tests. The
prior frontal is ``cxr/cr_pa_jpeg_baseline.dcm`` with new UIDs, the current study's patient and an earlier
StudyDate; beside it, a radiologist's final report (Enhanced SR, VERIFIED, Findings + Impressions sections) and
this node's own earlier SR (written by :func:`dicom_out.sr.build_findings_sr`, as the node writes them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import generate_uid

from dicom_out.algorithm import AlgorithmInfo
from dicom_out.common import quiet_person_name_warnings, source_header
from dicom_out.sr import GroundedFinding, build_findings_sr

PRIOR_DATE = "20230115"
CURRENT_DATE = "20240610"
RADIOLOGIST_FINDINGS = "Heart size normal. Lungs are clear."
RADIOLOGIST_IMPRESSION = "No acute cardiopulmonary process."
OWN_FINDING = "EMULATED: an earlier finding of this node."


@dataclass
class PriorStudy:
    frontal: Path
    radiologist_sr: Path
    own_sr: Path
    study_uid: str

    @property
    def files(self) -> list[Path]:
        return [self.frontal, self.radiologist_sr, self.own_sr]


def derive_cxr_study(out_dir: Path, frontal: Path, lateral: Path | None = None, *, study_uid: str | None = None,
                     patient_id: str = "DEMO-0001", patient_name: str = "DEMO^PATIENT",
                     frontal_view: str | None = "PA", lateral_view: str | None = "LL",
                     study_date: str | None = None) -> list[Path]:
    """Write a chest X-ray study built from real images: fresh UIDs, one patient, one study.

    The lateral (if any) takes the frontal's patient and study and ``lateral_view`` as ViewPosition; a view
    of ``None`` removes ViewPosition (a header without the view, as real studies sometimes are).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    paths = []
    for i, (src, view) in enumerate([(frontal, frontal_view)] + ([(lateral, lateral_view)] if lateral else [])):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.BodyPartExamined = "CHEST"
        ds.SeriesNumber = i + 1
        ds.InstanceNumber = 1
        if study_date:
            ds.StudyDate = study_date
        if view is None:
            if "ViewPosition" in ds:
                del ds.ViewPosition
        else:
            ds.ViewPosition = view
        path = out_dir / f"{i + 1:02d}_{'frontal' if i == 0 else 'lateral'}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def copy_series(sources: Iterable[Path], out_dir: Path, *, patient_id: str, study_uid: str | None = None) -> list[Path]:
    """Copy real instances with one new study, one new series per source series and new SOP Instance UIDs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_map: dict[str, str] = {}
    paths = []
    for i, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_map.setdefault(str(ds.get("SeriesInstanceUID", "")), generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient_id
        ds.PatientName = f"LOAD^{patient_id}"
        path = out_dir / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _concept(value: str, scheme: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def radiologist_sr(frontal: pydicom.Dataset, path: Path) -> Path:
    """A verified, complete Enhanced SR with Findings and Impressions sections (as a reporting system writes)."""
    def section(code: str, meaning: str, text: str) -> hd.sr.ContainerContentItem:
        item = hd.sr.ContainerContentItem(name=_concept(code, "DCM", meaning), relationship_type="CONTAINS")
        item.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
            name=_concept("121071", "DCM", "Finding") if code == "121070" else _concept("121073", "DCM", "Impression"),
            value=text, relationship_type="CONTAINS")])
        return item

    root = hd.sr.ContainerContentItem(name=_concept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = hd.sr.ContentSequence([
        section("121070", "Findings", RADIOLOGIST_FINDINGS),
        section("121072", "Impressions", RADIOLOGIST_IMPRESSION),
    ])
    with quiet_person_name_warnings():
        sr = hd.sr.EnhancedSR(
            evidence=[source_header(frontal)], content=root, series_instance_uid=generate_uid(), series_number=50,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="Reporting Co",
            is_complete=True, is_final=True, is_verified=True, verifying_observer_name="Reader^Rita",
            verifying_organization="Test Hospital")
    sr.save_as(path, enforce_file_format=True)
    return path


def own_sr(frontal: pydicom.Dataset, path: Path) -> Path:
    sr = build_findings_sr(
        frontal=frontal, evidence=[frontal], findings=[GroundedFinding(OWN_FINDING, ((10.0, 10.0, 50.0, 50.0),))],
        algorithm=AlgorithmInfo(name="CXRReportGen", version="emulator", emulated=True),
        series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(), series_number=9901)
    sr.save_as(path, enforce_file_format=True)
    return path


def make_prior_study(out_dir: Path, data: Path, *, patient_id: str = "DEMO-0001",
                     patient_name: str = "DEMO^PATIENT", study_date: str = PRIOR_DATE) -> PriorStudy:
    (frontal_path,) = derive_cxr_study(out_dir, data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                       patient_id=patient_id, patient_name=patient_name, study_date=study_date)
    frontal = pydicom.dcmread(frontal_path, stop_before_pixels=True)
    return PriorStudy(frontal=frontal_path, radiologist_sr=radiologist_sr(frontal, out_dir / "radiologist_sr.dcm"),
                      own_sr=own_sr(frontal, out_dir / "own_sr.dcm"), study_uid=str(frontal.StudyInstanceUID))
