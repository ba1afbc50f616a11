"""AI segmentation masks as DICOM Segmentation objects (highdicom).

One segment per prompt (label = the prompt), algorithm type AUTOMATIC, identified by an
``AlgorithmIdentificationSequence`` (name, version, family DCM "Artificial Intelligence"); the algorithm is also
recorded as IHE AIR "Processing Algorithm" contributing equipment. The Equipment module names the node itself
(as in the SR and GSPS writers).

Choices (see NOTES "highdicom 0.28 gotchas"):

- BINARY (or FRACTIONAL, PROBABILITY, 0..255) segmentations; uncompressed (Explicit VR Little Endian) by default,
  JPEG 2000 lossless on request: the only encodings highdicom allows for BINARY.
- ``omit_empty_frames=False``: every source frame gets a frame per segment, even an empty one (OHIF misplaces SEGs
  whose empty frames were omitted).
- Source images are passed to highdicom as pixel-free header copies (``dicom_out.common.source_header``): highdicom
  needs their geometry and identity, not their pixels, so datasets read with ``stop_before_pixels=True`` work, and
  missing Type 2 patient/study attributes are added empty.
- Images without patient geometry (ultrasound, secondary capture, some XA/CR): highdicom writes no Frame of
  Reference, and dciodvfy then wants PatientOrientation and refuses SliceThickness in the shared Pixel Measures.
  :func:`_fix_without_patient_geometry` copies PatientOrientation from the source (empty when unknown) and leaves
  the Pixel Measures functional group out (highdicom's reader needs SliceThickness in it, dciodvfy refuses it).
- Source defects highdicom would copy (a zero Pixel Spacing, incomplete Referenced Study items) are removed from
  the header copies first (:func:`_sanitize_header`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from dicom_out.algorithm import EMULATED_MARKER, AlgorithmInfo, add_processing_algorithm
from dicom_out.common import (
    equipment_kwargs,
    labelled_text,
    quiet_person_name_warnings,
    source_header,
)
from dicom_out.seg_codes import codes_for_category, codes_for_prompt

__all__ = ["ALLOWED_TRANSFER_SYNTAXES", "SegmentSpec", "build_segmentation", "default_seg_series_description"]

ALLOWED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless)

#: Display colours (RGB) of segments 1, 2, ... (cycled): RecommendedDisplayCIELabValue, so viewers need not pick
#: one (OHIF warns "RecommendedDisplayCIELabValue not found" and chooses its own otherwise).
SEGMENT_COLORS_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 200, 255), (255, 200, 0), (80, 220, 80), (200, 100, 255), (255, 140, 40),
)


def segment_color(number: int) -> hd.color.CIELabColor:
    """The display colour of segment ``number`` (1-based), from :data:`SEGMENT_COLORS_RGB`."""
    return hd.color.CIELabColor.from_rgb(*SEGMENT_COLORS_RGB[(number - 1) % len(SEGMENT_COLORS_RGB)])


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: what the mask shows.

    ``label``: the prompt (Segment Label, LO: cut to 64 characters). ``category`` / ``property_type``: CID 7150 /
    7151 codes (see :mod:`dicom_out.seg_codes`). ``tracking_id`` / ``tracking_uid``: optional, both or neither
    (highdicom's rule). ``model_category``: the model's own category text (MedImageParse ``text_features``), kept for
    callers and logs; it does not go into the object.
    """

    label: str
    category: Code
    property_type: Code
    tracking_id: str | None = None
    tracking_uid: str | None = None
    model_category: str | None = None

    def __post_init__(self) -> None:
        if not self.label or not self.label.strip():
            raise ValueError("a segment needs a label (the prompt)")
        if (self.tracking_id is None) != (self.tracking_uid is None):
            raise ValueError("tracking_id and tracking_uid go together")

    @classmethod
    def from_model_category(cls, prompt: str, category: str) -> SegmentSpec:
        """A segment for a MedImageParse (2D) prompt and its ``text_features`` category."""
        cat, typ = codes_for_category(category)
        return cls(prompt.strip(), cat, typ, model_category=category)

    @classmethod
    def from_prompt(cls, prompt: str, category: str | None = None) -> SegmentSpec:
        """A segment for a prompt without a model category (MedImageParse 3D), by keywords."""
        cat, typ = codes_for_prompt(prompt, category)
        return cls(prompt.strip(), cat, typ, model_category=category)


def default_seg_series_description(algorithm: AlgorithmInfo) -> str:
    text = f"AI segmentation {algorithm.name}"
    return f"{text} ({EMULATED_MARKER})" if algorithm.emulated else text


def _has_patient_geometry(ds: pydicom.Dataset) -> bool:
    if "FrameOfReferenceUID" not in ds or not ds.FrameOfReferenceUID:
        return False
    if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
        return True
    shared = ds.get("SharedFunctionalGroupsSequence")
    return bool(shared and "PlaneOrientationSequence" in shared[0])


def _frames_of(ds: pydicom.Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _check_masks(masks: np.ndarray, sources: Sequence[pydicom.Dataset], n_segments: int, fractional: bool
                 ) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim == 3 and n_segments == 1:
        masks = masks[..., None]
    if masks.ndim != 4:
        raise ValueError(f"masks must be (frames, rows, columns, segments), got shape {masks.shape}")
    n_frames, rows, columns, n_seg = masks.shape
    if n_seg != n_segments:
        raise ValueError(f"masks have {n_seg} segments, {n_segments} segment specs given")
    expected = len(sources) if len(sources) > 1 else _frames_of(sources[0])
    if n_frames != expected:
        raise ValueError(f"masks have {n_frames} frames, the source images have {expected}")
    for ds in sources:
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise ValueError(f"mask frames are {rows}x{columns}, source image is {ds.Rows}x{ds.Columns}")
    if fractional:
        values = masks.astype(np.float32)
        if not np.all(np.isfinite(values)) or values.min(initial=0) < 0 or values.max(initial=0) > 1:
            raise ValueError("fractional masks must hold values in 0..1")
        return values
    if masks.dtype == bool:
        return masks.astype(np.uint8)
    if not np.isin(masks, (0, 1)).all():
        raise ValueError("binary masks must hold 0/1 (or bool); pass fractional=True for probabilities")
    return masks.astype(np.uint8)


def _sanitize_header(header: pydicom.Dataset) -> pydicom.Dataset:
    """Remove source defects that highdicom would copy into the SEG and that dciodvfy rejects (in place).

    - a Pixel Spacing that is not two positive numbers (e.g. "0\\0" in some CR headers): dropped, so the SEG has no
      Pixel Measures rather than an invalid one;
    - Referenced Study Sequence items without Referenced SOP Class / Instance UID: dropped (the sequence is Type 3).
    """
    if "PixelSpacing" in header:
        try:
            spacing = [float(v) for v in header.PixelSpacing]
            valid = len(spacing) == 2 and all(v > 0 for v in spacing)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            del header.PixelSpacing
    if "ReferencedStudySequence" in header:
        kept = [item for item in header.ReferencedStudySequence
                if item.get("ReferencedSOPClassUID") and item.get("ReferencedSOPInstanceUID")]
        if kept:
            header.ReferencedStudySequence = kept
        else:
            del header.ReferencedStudySequence
    return header


def _fix_without_patient_geometry(seg: hd.seg.Segmentation, source: pydicom.Dataset) -> None:
    """Make a SEG on an image without Frame of Reference pass dciodvfy (see the module docstring)."""
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    # highdicom's own reader wants SliceThickness in a Pixel Measures item, dciodvfy refuses it without a Frame of
    # Reference: leave the (optional, here) Pixel Measures out; the SEG is aligned to its source by pixel indices.
    shared = seg.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        del shared[0].PixelMeasuresSequence
    for frame_item in seg.get("PerFrameFunctionalGroupsSequence", []):
        if "PixelMeasuresSequence" in frame_item:
            del frame_item.PixelMeasuresSequence


def build_segmentation(
    *,
    source_images: Sequence[pydicom.Dataset],
    masks: np.ndarray,
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    fractional: bool = False,
    series_description: str | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.seg.Segmentation:
    """A DICOM SEG of ``masks`` on ``source_images``.

    ``masks``: (n_frames, rows, columns, n_segments), bool/0-1 integers (BINARY) or floats 0..1 with
    ``fractional=True`` (FRACTIONAL, PROBABILITY, stored as 0..255). Frames are ordered like ``source_images``
    (one frame per single-frame source; highdicom does not sort), or, for ONE multi-frame source, like its frames.
    A (n_frames, rows, columns) array is accepted for a single segment. ``segments[i]`` describes
    ``masks[..., i]``, segment number i + 1.
    """
    if not source_images:
        raise ValueError("at least one source image is needed")
    if not segments:
        raise ValueError("at least one segment is needed")
    if transfer_syntax_uid not in ALLOWED_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {transfer_syntax_uid} not allowed: use uncompressed or JPEG 2000 lossless")
    headers = [_sanitize_header(source_header(ds)) for ds in source_images]
    pixels = _check_masks(masks, headers, len(segments), fractional)
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.device_name[:64], family=codes.DCM.ArtificialIntelligence, version=algorithm.version[:64]
    )
    descriptions = []
    for number, spec in enumerate(segments, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.label.strip()[:64],
                segmented_property_category=spec.category,
                segmented_property_type=spec.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
                tracking_id=spec.tracking_id,
                tracking_uid=spec.tracking_uid,
                display_color=segment_color(number),
            )
        )
    with quiet_person_name_warnings():
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=pixels,
            segmentation_type=(
                hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
            ),
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            **equipment_kwargs(),
            device_serial_number=algorithm.device_uid,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional else None,
            max_fractional_value=255,
            content_description=labelled_text(f"Segmentation by {algorithm.label}", algorithm),
            content_label="AI_SEGMENTATION",
            transfer_syntax_uid=transfer_syntax_uid,
            omit_empty_frames=False,
        )
    seg.SeriesDescription = labelled_text(
        series_description if series_description is not None else default_seg_series_description(algorithm),
        algorithm,
    )
    if not _has_patient_geometry(headers[0]):
        _fix_without_patient_geometry(seg, headers[0])
    add_processing_algorithm(seg, algorithm)
    return seg
