"""Zero-shot classifications as a DICOM Comprehensive SR (TID 1500 Measurement Report).

One TID 1501 measurement group per classified image:

- tracking identifier "Image N classification" and a UID derived from the image, the algorithm and the labels;
- the algorithm (TID 4019);
- the Finding (DCM 121071): the winning label of the first label set;
- per label, a measurement: concept the label, value its probability, unit UCUM "1" (no units);
- the classified image as the group's "Source of Measurement" (DCM 121112, TID 1501 row 10c): an SCOORD outlining
  the whole image, SELECTED FROM the image. OHIF 3.13.2 assumes every measurement group of a TID 1500 report has
  coordinates (a group with none makes the whole SR fail there), so the image is referenced by its outline: OHIF
  draws it as a rectangle around the image, labelled with the probabilities.

The report's TID 1500 "Qualitative Evaluations" container holds, per image, for each label set a CODE item
(concept "<set> (zero-shot)", value the winning label) and the words as TEXT, e.g.
``Image 1: view: x-ray chest posteroanterior (p = 0.83)``: that is where TID 1500 (and PixelMed's validator) puts
qualitative evaluations, not inside a measurement group.

Labels are free text chosen by the site (``params.labels``), so they are coded in the private scheme
:data:`LABEL_SCHEME` with a code value derived from the text (``L`` + 10 hex digits of its SHA-256) and the text
(at most 64 characters) as the meaning; the full text is in the TEXT item. The observer is the model as a DEVICE,
as in :mod:`dicom_out.sr`; emulator output says EMULATED in the series description and the device name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_out.algorithm import AlgorithmInfo, add_processing_algorithm
from dicom_out.common import (
    algorithm_id,
    equipment_kwargs,
    labelled_text,
    observation_context,
    quiet_person_name_warnings,
    source_header,
)
from dicom_out.sr import DEFAULT_PROCEDURE_REPORTED, qualitative_evaluations

LABEL_SCHEME = "99AINODE"
NO_UNITS = Code("1", "UCUM", "no units")


@dataclass(frozen=True)
class ImageClassification:
    """The zero-shot result of one image: per label set, every label's probability (the winner is the max)."""

    image: pydicom.Dataset  # the source header (pixels not needed)
    probabilities: Mapping[str, Mapping[str, float]]  # label set -> label -> probability

    def winner(self, label_set: str) -> tuple[str, float]:
        probs = self.probabilities[label_set]
        label = max(probs, key=lambda k: (probs[k], k))
        return label, float(probs[label])


def label_code(text: str) -> Code:
    """The private code of a label (see the module docstring)."""
    value = "L" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return Code(value, LABEL_SCHEME, text[:64])


def set_code(label_set: str) -> Code:
    value = "S" + hashlib.sha256(label_set.encode("utf-8")).hexdigest()[:10]
    return Code(value, LABEL_SCHEME, f"{label_set} (zero-shot)"[:64])


def _whole_image_source(header: pydicom.Dataset) -> hd.sr.ScoordContentItem:
    """"Source of Measurement": the outline of the whole image (column, row), SELECTED FROM the image."""
    rows, columns = float(header.Rows), float(header.Columns)
    outline = np.array([[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]])
    item = hd.sr.ScoordContentItem(name=codes.DCM.SourceOfMeasurement, graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                   graphic_data=outline, relationship_type="CONTAINS")
    item.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
        name=codes.DCM.SourceOfMeasurement, referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID, relationship_type="SELECTED FROM")])
    return item


def _words(number: int, item: ImageClassification, algorithm: AlgorithmInfo) -> str:
    """"Image 1: view: x-ray chest lateral (p = 0.80)", with the algorithm's label for emulator output."""
    text = f"Image {number}: " + "; ".join(
        f"{label_set}: {label} (p = {p:.2f})" for label_set in item.probabilities
        for label, p in [item.winner(label_set)])
    return f"{text} [{algorithm.label}]" if algorithm.emulated else text


def _evaluations(items: Sequence[ImageClassification], algorithm: AlgorithmInfo) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": each image's winner per label set (CODE), then the words (TEXT)."""
    container = qualitative_evaluations([_words(i, item, algorithm) for i, item in enumerate(items, start=1)],
                                        coded=False)
    winners = [hd.sr.CodeContentItem(name=set_code(label_set), value=label_code(item.winner(label_set)[0]),
                                     relationship_type="CONTAINS")
               for item in items for label_set in item.probabilities]
    container.ContentSequence = hd.sr.ContentSequence([*winners, *container.ContentSequence])
    return container


def _group(number: int, item: ImageClassification, algorithm: AlgorithmInfo) -> hd.sr.Template:
    header = item.image
    measurements = []
    for label_set in item.probabilities:
        for text, prob in item.probabilities[label_set].items():
            measurements.append(hd.sr.Measurement(name=label_code(text), value=round(float(prob), 6), unit=NO_UNITS,
                                                  algorithm_id=algorithm_id(algorithm)))
    uid = generate_uid(entropy_srcs=["dicom-ai-node/classification", str(header.SOPInstanceUID),
                                     algorithm.device_uid, repr(sorted((s, sorted(p.items()))
                                                                       for s, p in item.probabilities.items()))])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=f"Image {number} classification"),
        algorithm_id=algorithm_id(algorithm),
        measurements=measurements,
        finding_type=label_code(item.winner(next(iter(item.probabilities)))[0]),
    )
    group[0].ContentSequence.append(_whole_image_source(header))
    return group


def build_classification_sr(
    *,
    items: Sequence[ImageClassification],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    predecessor: pydicom.Dataset | None = None,
) -> pydicom.Dataset:
    """A Comprehensive SR of the classifications of images of one study (``items`` non-empty, same study)."""
    if not items:
        raise ValueError("at least one classified image is needed")
    headers = [source_header(item.image) for item in items]
    study = headers[0].StudyInstanceUID
    if any(h.StudyInstanceUID != study for h in headers):
        raise ValueError("all classified images must belong to one study")
    items = [ImageClassification(image=h, probabilities=item.probabilities) for h, item in zip(headers, items)]
    groups = [_group(i, item, algorithm) for i, item in enumerate(items, start=1)]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(algorithm),
        procedure_reported=DEFAULT_PROCEDURE_REPORTED,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    report[0].ContentSequence.append(_evaluations(items, algorithm))
    with quiet_person_name_warnings():
        sr = hd.sr.ComprehensiveSR(
            evidence=headers,
            content=report,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            **equipment_kwargs(),
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=[predecessor] if predecessor is not None else None,
            series_description=labelled_text(f"AI classification {algorithm.name}", algorithm),
        )
    add_processing_algorithm(sr, algorithm)
    return sr
