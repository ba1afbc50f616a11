"""CXRReportGen's boxes as a Grayscale Softcopy Presentation State on the frontal image.

One graphic layer (``GRAPHIC_LAYER``); each box is a closed 5-point POLYLINE in PIXEL units (the same points as the
SR region) with a short text label anchored at the box's top-left corner. The image's own window is kept (highdicom
copies the VOI LUT / window and the modality LUT from the image; an image without a window gets none, so the viewer
uses its default). MONOCHROME1 images get Presentation LUT Shape INVERSE, others IDENTITY, so the image displays the
right way round under the presentation state.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import pydicom

from dicom_out.algorithm import AlgorithmInfo, add_processing_algorithm
from dicom_out.common import (
    equipment_kwargs,
    labelled_text,
    quiet_person_name_warnings,
    resolve_series_description,
    set_series_laterality,
    source_header,
)
from dicom_out.sr import GroundedFinding, box_polyline, finding_tracking_uid

GRAPHIC_LAYER = "AI_FINDINGS"
#: ContentLabel (CS, 16 chars, A-Z 0-9 _ space).
CONTENT_LABEL = "AI_FINDINGS"
CONTENT_LABEL_EMULATED = "AI_EMULATED"
#: Longest text label drawn next to a box.
MAX_LABEL_CHARS = 64


def finding_label(number: int, text: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    """"3: Small left pleural effusion." cut to ``max_chars`` with "..." (ASCII: any character set encodes it)."""
    label = " ".join(f"{number}: {text}".split())
    if len(label) > max_chars:
        label = label[: max_chars - 3].rstrip() + "..."
    return label


def build_findings_gsps(
    *,
    frontal: pydicom.Dataset,
    findings: Sequence[GroundedFinding],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    series_description: str | None = None,
) -> pydicom.Dataset:
    """A GSPS drawing every box of ``findings`` on the frontal image (findings without a box are not drawn).

    With no box at all the presentation state still carries the window and polarity, but no graphic annotation.
    ``frontal`` may be read with ``stop_before_pixels=True``; it is not modified.
    """
    image = source_header(frontal)
    if int(image.get("SamplesPerPixel", 1)) != 1:
        raise ValueError("a grayscale presentation state needs a single-sample (grayscale) image")
    for kw in ("Rows", "Columns", "PhotometricInterpretation"):
        if kw not in image:
            raise ValueError(f"frontal image header lacks {kw}")
    rows, columns = int(image.Rows), int(image.Columns)

    layer = hd.pr.GraphicLayer(
        layer_name=GRAPHIC_LAYER,
        order=1,
        description=labelled_text(f"Boxes of {algorithm.label}", algorithm),
    )
    graphic_objects: list[hd.pr.GraphicObject] = []
    text_objects: list[hd.pr.TextObject] = []
    for i, finding in enumerate(findings, start=1):
        if not isinstance(finding, GroundedFinding):
            raise TypeError(f"findings[{i - 1}] is not a GroundedFinding")
        for j, box in enumerate(finding.boxes, start=1):
            points = box_polyline(box, rows, columns)
            uid = finding_tracking_uid(image.SOPInstanceUID, algorithm, i, j, finding)
            graphic_objects.append(
                hd.pr.GraphicObject(
                    graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                    graphic_data=points,
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    is_filled=False,
                    tracking_id=f"Finding {i} box {j}",
                    tracking_uid=uid,
                )
            )
            # The anchor is the box's top-left corner (already inside the image, clipped by box_polyline).
            text_objects.append(
                hd.pr.TextObject(
                    text_value=finding_label(i, finding.text),
                    units=hd.pr.AnnotationUnitsValues.PIXEL,
                    anchor_point=(float(points[0, 0]), float(points[0, 1])),
                    anchor_point_visible=False,
                )
            )
    annotations = None
    if graphic_objects:
        annotations = [
            hd.pr.GraphicAnnotation(
                referenced_images=[image],
                graphic_layer=layer,
                graphic_objects=graphic_objects,
                text_objects=text_objects,
            )
        ]

    inverse = str(image.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    presentation_lut = hd.PresentationLUTTransformation(
        presentation_lut_shape=(
            hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY
        )
    )
    with quiet_person_name_warnings():
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[image],
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            **equipment_kwargs(),
            device_serial_number=None,
            content_label=CONTENT_LABEL_EMULATED if algorithm.emulated else CONTENT_LABEL,
            content_description=labelled_text(f"AI findings of {algorithm.label}", algorithm),
            graphic_annotations=annotations,
            graphic_layers=[layer] if annotations else None,
            presentation_lut_transformation=presentation_lut,
            series_description=resolve_series_description(algorithm, series_description),
        )
    set_series_laterality(gsps, image)
    add_processing_algorithm(gsps, algorithm)
    return gsps

