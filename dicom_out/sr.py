"""CXRReportGen's grounded findings as a DICOM Comprehensive SR (TID 1500 Measurement Report, IHE AI Results).

Layout of the document, chosen so that viewers read it (OHIF 3.13.2 measured, see docs/viewers.md, "What each viewer
shows") and PixelMed's TID 1500 validator finds nothing outside the template:

- observer context: the model as a DEVICE (TID 1004: UID, name, manufacturer, model name);
- procedure reported: SCT 363679005 "Imaging procedure" by default (see ``DEFAULT_PROCEDURE_REPORTED``);
- one TID 1410 Planar ROI group per box: a closed 5-point POLYLINE on the frontal image (a rectangle in OHIF),
  a tracking identifier ("Finding 2 box 1") and UID, the coded Finding (DCM 121071, a CODE:
  :mod:`dicom_out.finding_codes`), the algorithm (TID 4019), and the sentence as TEXT "Comment" (DCM 121106),
  which OHIF shows as the measurement's label;
- the sentences without a box in the TID 1500 "Qualitative Evaluations" container, each as a coded Finding and
  the sentence as TEXT Finding: never as measurement groups without geometry (OHIF 3.13.2 assumes every
  measurement group has an SCOORD and a CODE Finding; one such group makes the whole SR fail there);
- zero findings: no measurement group; the Qualitative Evaluations container says ``NO_FINDINGS_TEXT``.

Coordinates are (column, row) in source pixels, origin at the top-left corner of the top-left pixel, as in DICOM
SCOORD and GSPS: the model's (x0, y0, x1, y1) map to (x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_out.algorithm import AlgorithmInfo, add_processing_algorithm
from dicom_out.common import (
    REQUIRED_UIDS,
    algorithm_id,
    derived_uid,
    equipment_kwargs,
    observation_context,
    quiet_person_name_warnings,
    resolve_series_description,
    source_header,
)
from dicom_out.common import finding_tracking_uid as common_tracking_uid
from dicom_out.finding_codes import finding_code

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

#: Procedure reported (TID 1500 row 3, DCID 100 "Quantitative Diagnostic Imaging Procedures"). CID 100 is
#: extensible, but PixelMed's validator reports an Error for any code outside its copy of CID 100 (2019), which
#: lacks even LOINC 43468-8 "XR unspecified body region" (in CID 100 today) and has no chest code at all.
#: SCT 363679005 "Imaging procedure" is in both, so it is the default; the study itself says what was done.
#: Callers wanting a specific code (LOINC 36643-5 "XR Chest 2 Views", 43468-8) pass ``procedure_reported``.
DEFAULT_PROCEDURE_REPORTED = Code("363679005", "SCT", "Imaging procedure")

#: The TEXT written when the model reports nothing.
NO_FINDINGS_TEXT = "No findings reported by the algorithm."

#: TEXT "Comment" of a box group (OHIF's label) and TID 1500's container for evaluations without geometry.
COMMENT = Code("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

@dataclass(frozen=True)
class GroundedFinding:
    """One sentence of the generated report with its boxes.

    ``boxes``: (x0, y0, x1, y1) in SOURCE pixel coordinates of the frontal image: x = column, y = row, floats,
    origin at the top-left corner of the top-left pixel. Empty for an ungrounded sentence.
    """

    text: str
    boxes: tuple[Box, ...] = ()


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
    return common_tracking_uid(frontal_sop_instance_uid, algorithm, finding_number, box_number, finding.text, box)


def _append(container: Dataset, item: Dataset) -> None:
    if "ContentSequence" not in container:
        container.ContentSequence = hd.sr.ContentSequence()
    container.ContentSequence.append(item)


def comment_item(value: str) -> hd.sr.TextContentItem:
    """TEXT "Comment" (DCM 121106): the sentence of a box; OHIF shows it as the measurement's label."""
    return hd.sr.TextContentItem(name=COMMENT, value=value, relationship_type="CONTAINS")


def qualitative_evaluations(sentences: Sequence[str], coded: bool = True) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the coded Findings (when ``coded``), then each sentence as TEXT Finding.

    TID 1500 orders the rows: every CODE item (row 13) comes before the TEXT items (row 14).
    """
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    if coded:
        for sentence in sentences:
            _append(container, hd.sr.CodeContentItem(name=codes.DCM.Finding, value=finding_code(sentence),
                                                     relationship_type="CONTAINS"))
    for sentence in sentences:
        _append(container, hd.sr.TextContentItem(name=codes.DCM.Finding, value=sentence,
                                                 relationship_type="CONTAINS"))
    return container


def build_measurement_groups(
    *,
    frontal: Dataset,
    findings: Sequence[GroundedFinding],
    algorithm: AlgorithmInfo,
) -> list[hd.sr.Template]:
    """TID 1410 groups, one per box (the sentences without a box go to :func:`qualitative_evaluations`)."""
    rows, columns = int(frontal.Rows), int(frontal.Columns)
    groups: list[hd.sr.Template] = []
    for i, finding in enumerate(findings, start=1):
        if not isinstance(finding, GroundedFinding):
            raise TypeError(f"findings[{i - 1}] is not a GroundedFinding")
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
                finding_type=finding_code(finding.text),
                algorithm_id=algorithm_id(algorithm),
            )
            _append(group[0], comment_item(finding.text))
            groups.append(group)
    return groups


def _placeholder_group(algorithm: AlgorithmInfo) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("placeholder"), identifier="placeholder"),
        algorithm_id=algorithm_id(algorithm))


def _drop_imaging_measurements(root: Dataset) -> None:
    """Remove the "Imaging Measurements" container (126010) from the report's root content."""
    root.ContentSequence = hd.sr.ContentSequence(
        [item for item in root.ContentSequence
         if not (item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010")])


def unboxed_sentences(findings: Sequence[GroundedFinding]) -> list[str]:
    """The sentences without a box, in order; ``NO_FINDINGS_TEXT`` alone when there are no findings at all."""
    if not findings:
        return [NO_FINDINGS_TEXT]
    return [f.text for f in findings if not f.boxes]


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

    groups = build_measurement_groups(frontal=front, findings=findings, algorithm=algorithm)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(algorithm),
        procedure_reported=procedure_reported,
        imaging_measurements=groups or [_placeholder_group(algorithm)],
        title=codes.cid7021.ImagingMeasurementReport,
    )
    if not groups:  # highdicom insists on a measurement group; TID 1500 does not need one
        _drop_imaging_measurements(report[0])
    sentences = unboxed_sentences(findings)
    if sentences:
        _append(report[0], qualitative_evaluations(sentences))
    previous = None
    if predecessor is not None:
        for kw in REQUIRED_UIDS:
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
            **equipment_kwargs(),
            is_complete=True,
            is_final=False,  # machine output that no clinician has verified: PRELIMINARY
            is_verified=False,
            previous_versions=previous,
            series_description=resolve_series_description(algorithm, series_description),
        )
    add_processing_algorithm(sr, algorithm)
    return sr
