"""CXRReportGen's grounded findings as a DICOM Comprehensive SR (TID 1500 Measurement Report).

Layout of the document:

- observer context: the model as a DEVICE (TID 1004: UID, name, manufacturer, model name);
- procedure reported: SCT 363679005 "Imaging procedure" by default (see ``DEFAULT_PROCEDURE_REPORTED``);
- one TID 1410 Planar ROI group per box: a closed 5-point POLYLINE on the frontal image, a tracking identifier
  ("Finding 2 box 1") and UID, the algorithm (TID 4019), and the sentence as TEXT "Finding" (DCM 121071);
- one TID 1501 group per finding without a box, the sentence as TEXT, its source images referenced;
- zero findings: one TID 1501 group whose TEXT says ``NO_FINDINGS_TEXT``.

Coordinates are (column, row) in source pixels, origin at the top-left corner of the top-left pixel, as in DICOM
SCOORD and GSPS: the model's (x0, y0, x1, y1) map to (x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0).
"""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_out.algorithm import (
    EMULATED_MARKER,
    NODE_MANUFACTURER,
    NODE_MODEL_NAME,
    NODE_SOFTWARE_VERSION,
    AlgorithmInfo,
    add_processing_algorithm,
)

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

#: Procedure reported (TID 1500 row 3, DCID 100 "Quantitative Diagnostic Imaging Procedures"). CID 100 is
#: extensible, but PixelMed's validator reports an Error for any code outside its copy of CID 100 (2019), which
#: lacks even LOINC 43468-8 "XR unspecified body region" (in CID 100 today) and has no chest code at all.
#: SCT 363679005 "Imaging procedure" is in both, so it is the default; the study itself says what was done.
#: Callers wanting a specific code (LOINC 36643-5 "XR Chest 2 Views", 43468-8) pass ``procedure_reported``.
DEFAULT_PROCEDURE_REPORTED = Code("363679005", "SCT", "Imaging procedure")

#: The TEXT written when the model reports nothing (TID 1500 needs at least one measurement group).
NO_FINDINGS_TEXT = "No findings reported by the algorithm."

#: Patient / study attributes highdicom reads from the first evidence dataset (attribute access: missing ones raise).
_REQUIRED_EMPTY_OK = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

#: Copied patient/study values that real headers often get wrong; an invalid one would make our object invalid.
_VALID = {
    "PatientAge": re.compile(r"\d{3}[DWMY]"),
    "PatientSex": re.compile(r"[MFO]?"),
    "PatientBirthDate": re.compile(r"(\d{8})?"),
    "StudyDate": re.compile(r"(\d{8})?"),
    "StudyTime": re.compile(r"(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?"),
}


@dataclass(frozen=True)
class GroundedFinding:
    """One sentence of the generated report with its boxes.

    ``boxes``: (x0, y0, x1, y1) in SOURCE pixel coordinates of the frontal image: x = column, y = row, floats,
    origin at the top-left corner of the top-left pixel. Empty for an ungrounded sentence.
    """

    text: str
    boxes: tuple[Box, ...] = ()


def source_header(ds: pydicom.Dataset) -> Dataset:
    """A pixel-free copy of a source image header with what highdicom needs present.

    Works for datasets read with ``stop_before_pixels=True``. Type 2 patient/study attributes that are absent are
    added empty (DICOM allows empty values; highdicom refuses missing ones). The input is not modified.
    """
    missing = [kw for kw in _REQUIRED_UIDS if not ds.get(kw)]
    if missing:
        raise ValueError(f"source image header lacks {', '.join(missing)}")
    out = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0 or elem.tag.group == 0x0002:
            continue  # pixel data (and the file meta group, if someone merged it in)
        out.add(copy.deepcopy(elem))
    for kw, pattern in _VALID.items():
        if kw not in out or out[kw].value is None:
            continue
        if not pattern.fullmatch(str(out[kw].value).strip()):
            logger.warning("source header has an invalid %s: %s", kw, "left out" if kw == "PatientAge" else "emptied")
            if kw == "PatientAge":  # type 3: drop it
                del out[kw]
            else:  # type 2: keep it, empty
                setattr(out, kw, "")
    for kw in _REQUIRED_EMPTY_OK:
        if kw not in out:
            setattr(out, kw, "")
    return out


@contextmanager
def quiet_person_name_warnings() -> Iterator[None]:
    """Silence highdicom's warning about single-component person names: we copy names, we do not compose them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def box_polyline(box: Sequence[float], rows: int, columns: int) -> np.ndarray:
    """The closed 5-point polyline (column, row) of a box, clipped to the image [0, columns] x [0, rows].

    Corners are put in order (x0 <= x1, y0 <= y1). Non-finite coordinates raise ValueError.
    """
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates (x0, y0, x1, y1), got {len(box)}")
    values = [float(v) for v in box]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"box has non-finite coordinates: {box!r}")
    x0, y0, x1, y1 = values
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    x0, x1 = (min(max(x, 0.0), float(columns)) for x in (x0, x1))
    y0, y1 = (min(max(y, 0.0), float(rows)) for y in (y0, y1))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def finding_tracking_uid(
    frontal_sop_instance_uid: str,
    algorithm: AlgorithmInfo,
    finding_number: int,
    box_number: int | None,
    finding: GroundedFinding,
) -> str:
    """A tracking UID that depends only on the finding (image, algorithm, position, text, box).

    The SR and the GSPS built from the same result, and a revised SR repeating a finding, share the same UID.
    """
    box = finding.boxes[box_number - 1] if box_number is not None else None
    return generate_uid(
        entropy_srcs=[
            "dicom-ai-node/finding",
            frontal_sop_instance_uid,
            algorithm.device_uid,
            str(finding_number),
            str(box_number),
            finding.text,
            repr(box),
        ]
    )


def default_series_description(algorithm: AlgorithmInfo) -> str:
    text = f"AI findings {algorithm.name}"
    if algorithm.emulated:
        text += f" ({EMULATED_MARKER})"
    return text


def labelled_text(text: str, algorithm: AlgorithmInfo, max_chars: int = 64) -> str:
    """``text`` cut to ``max_chars`` (LO: 64); for emulated output it always ends up containing "EMULATED"."""
    suffix = f" ({EMULATED_MARKER})"
    if algorithm.emulated and EMULATED_MARKER not in text.upper():
        text += suffix
    if len(text) > max_chars:
        text = text[:max_chars]
        if algorithm.emulated and EMULATED_MARKER not in text.upper():
            text = text[: max_chars - len(suffix)].rstrip() + suffix
    return text


def resolve_series_description(algorithm: AlgorithmInfo, series_description: str | None) -> str:
    """The given description or the default one, labelled EMULATED where needed, at most 64 characters."""
    text = series_description if series_description is not None else default_series_description(algorithm)
    return labelled_text(text, algorithm)


def _text_item(value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=codes.DCM.Finding, value=value, relationship_type="CONTAINS")


def _append_text(group: hd.sr.Template, value: str) -> None:
    """Append a TEXT "Finding" item to the measurement group container (highdicom has no argument for it)."""
    container = group[0]
    if "ContentSequence" not in container:
        container.ContentSequence = hd.sr.ContentSequence()
    container.ContentSequence.append(_text_item(value))


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid,
        name=algorithm.device_name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    # No "Algorithm Manufacturer" row: older TID 4019 (PixelMed's) lacks it, and the manufacturer is already in
    # the observer context and ContributingEquipmentSequence.
    return hd.sr.AlgorithmIdentification(name=algorithm.device_name, version=algorithm.version)


def build_measurement_groups(
    *,
    frontal: Dataset,
    sources: Sequence[Dataset],
    findings: Sequence[GroundedFinding],
    algorithm: AlgorithmInfo,
) -> list[hd.sr.Template]:
    """TID 1410 groups (one per box) and TID 1501 groups (findings without a box, or "no findings")."""
    rows, columns = int(frontal.Rows), int(frontal.Columns)
    groups: list[hd.sr.Template] = []
    for i, finding in enumerate(findings, start=1):
        if not isinstance(finding, GroundedFinding):
            raise TypeError(f"findings[{i - 1}] is not a GroundedFinding")
        if finding.boxes:
            for j, box in enumerate(finding.boxes, start=1):
                region = hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=box_polyline(box, rows, columns),
                    source_image=hd.sr.SourceImageForRegion.from_source_image(frontal),
                )
                group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=finding_tracking_uid(frontal.SOPInstanceUID, algorithm, i, j, finding),
                        identifier=f"Finding {i} box {j}",
                    ),
                    referenced_region=region,
                    algorithm_id=_algorithm_id(algorithm),
                )
                _append_text(group, finding.text)
                groups.append(group)
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=finding_tracking_uid(frontal.SOPInstanceUID, algorithm, i, None, finding),
                    identifier=f"Finding {i}",
                ),
                algorithm_id=_algorithm_id(algorithm),
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources],
            )
            _append_text(group, finding.text)
            groups.append(group)
    if not groups:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=finding_tracking_uid(frontal.SOPInstanceUID, algorithm, 0, None, GroundedFinding(NO_FINDINGS_TEXT)),
                identifier="No findings",
            ),
            algorithm_id=_algorithm_id(algorithm),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources],
        )
        _append_text(group, NO_FINDINGS_TEXT)
        groups.append(group)
    return groups


def build_findings_sr(
    *,
    frontal: pydicom.Dataset,
    evidence: Sequence[pydicom.Dataset],
    findings: Sequence[GroundedFinding],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    predecessor: pydicom.Dataset | None = None,
    series_description: str | None = None,
    other_evidence: Sequence[pydicom.Dataset] = (),
    procedure_reported: Code | hd.sr.CodedConcept = DEFAULT_PROCEDURE_REPORTED,
) -> pydicom.Dataset:
    """A Comprehensive SR (TID 1500) of the grounded findings, in a new series of the frontal image's study.

    ``evidence``: every source image used (frontal, lateral), same study; the frontal is added if missing.
    ``other_evidence``: images of another study (a prior), listed in PertinentOtherEvidenceSequence.
    ``predecessor``: an earlier SR this one revises (PredecessorDocumentsSequence).
    Datasets read with ``stop_before_pixels=True`` are fine; none of the inputs is modified.
    """
    front = source_header(frontal)
    current = [front]
    seen = {front.SOPInstanceUID}
    for ds in evidence:
        if ds.SOPInstanceUID not in seen:
            current.append(source_header(ds))
            seen.add(ds.SOPInstanceUID)
    others = []
    for ds in other_evidence:
        if ds.SOPInstanceUID not in seen:
            others.append(source_header(ds))
            seen.add(ds.SOPInstanceUID)
    same_study = [ds for ds in current if ds.StudyInstanceUID == front.StudyInstanceUID]

    groups = build_measurement_groups(frontal=front, sources=same_study, findings=findings, algorithm=algorithm)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=procedure_reported,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    previous = None
    if predecessor is not None:
        for kw in _REQUIRED_UIDS:
            if not predecessor.get(kw):
                raise ValueError(f"predecessor SR lacks {kw}")
        previous = [predecessor]

    with quiet_person_name_warnings():
        sr = hd.sr.ComprehensiveSR(
            evidence=current + others,
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=NODE_MANUFACTURER,
            manufacturer_model_name=NODE_MODEL_NAME,
            software_versions=NODE_SOFTWARE_VERSION,
            is_complete=True,
            is_final=False,  # machine output that no clinician has verified: PRELIMINARY
            is_verified=False,
            previous_versions=previous,
            series_description=resolve_series_description(algorithm, series_description),
        )
    add_processing_algorithm(sr, algorithm)
    return sr
