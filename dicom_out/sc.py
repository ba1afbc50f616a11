"""A fallback for viewers that show neither SR nor GSPS: a DERIVED Secondary Capture with the result burned in.

One SC per annotated image, in its own series: the source image as displayed (the caller renders it to 8 bits,
e.g. with ``converters.pixels.to_uint8``: window, MONOCHROME1 inverted), in RGB, with

- the boxes of the findings drawn and numbered, their sentences listed ("1: Small left pleural effusion."), or
- the outline of each segment's mask in the segment's colour, with the segment labels listed;
- a banner :data:`BANNER` ("AI RESULT - NOT FOR PRIMARY DIAGNOSIS") and the algorithm (EMULATED where so).

The header says what it is: ImageType DERIVED\\SECONDARY, BurnedInAnnotation YES, a DerivationDescription, the
source image in SourceImageSequence, the model as IHE AIR "Processing Algorithm" contributing equipment. Pixel
geometry is the source's (same rows, columns, pixel spacing), so measurements on it stay meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_out.algorithm import AlgorithmInfo, add_processing_algorithm
from dicom_out.common import (
    NODE_EQUIPMENT,
    labelled_text,
    quiet_person_name_warnings,
    set_series_laterality,
    source_header,
)
from dicom_out.seg import SEGMENT_COLORS_RGB
from dicom_out.sr import box_polyline

BANNER = "AI RESULT - NOT FOR PRIMARY DIAGNOSIS"
BOX_RGB = (255, 220, 0)
BANNER_RGB = (255, 255, 255)
BANNER_BACKGROUND_RGB = (160, 0, 0)


@dataclass(frozen=True)
class BoxAnnotation:
    """One box (x0, y0, x1, y1 in source pixels, column/row) and the sentence it illustrates."""

    text: str
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class MaskAnnotation:
    """One segment's mask on this image (Rows x Columns, bool) and its label."""

    label: str
    mask: np.ndarray


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (in the mask, with a 4-neighbour outside it), 2 pixels thick."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = m & ~inner
    thick = edge.copy()
    thick[1:, :] |= edge[:-1, :]
    thick[:, 1:] |= edge[:, :-1]
    return thick


def render(
    image: np.ndarray,
    *,
    boxes: Sequence[BoxAnnotation] = (),
    masks: Sequence[MaskAnnotation] = (),
    caption: str,
) -> np.ndarray:
    """The RGB (Rows, Columns, 3) uint8 picture: ``image`` (2-D uint8) with boxes / outlines, legend and banner."""
    gray = np.asarray(image)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"image must be a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    rows, columns = gray.shape
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for n, item in enumerate(masks):
        if item.mask.shape != gray.shape:
            raise ValueError(f"mask {item.label!r} is {item.mask.shape}, the image {gray.shape}")
        rgb[_outline(item.mask)] = SEGMENT_COLORS_RGB[n % len(SEGMENT_COLORS_RGB)]
    picture = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(picture)
    size = max(12, min(rows, columns) // 40)
    font = _font(size)
    width = max(2, min(rows, columns) // 300)
    legend: list[tuple[str, tuple[int, int, int]]] = []
    for n, item in enumerate(boxes, start=1):
        points = box_polyline(item.box, rows, columns)
        draw.line([tuple(p) for p in points], fill=BOX_RGB, width=width)
        draw.text((float(points[0, 0]) + width + 2, float(points[0, 1]) + width + 2), str(n), fill=BOX_RGB, font=font)
        legend.append((f"{n}: {item.text}", BOX_RGB))
    for n, item in enumerate(masks):
        legend.append((item.label, SEGMENT_COLORS_RGB[n % len(SEGMENT_COLORS_RGB)]))
    band = size + 2 * (size // 3)
    draw.rectangle([0, 0, columns, band], fill=BANNER_BACKGROUND_RGB)
    draw.text((size // 2, size // 3), f"{BANNER} - {caption}", fill=BANNER_RGB, font=font)
    y = rows - (len(legend) + 1) * (size + 4)
    for text, colour in legend:
        draw.text((size // 2 + 1, y + 1), text, fill=(0, 0, 0), font=font)
        draw.text((size // 2, y), text, fill=colour, font=font)
        y += size + 4
    return np.asarray(picture)


def build_annotated_sc(
    *,
    source: pydicom.Dataset,
    image: np.ndarray,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    boxes: Sequence[BoxAnnotation] = (),
    masks: Sequence[MaskAnnotation] = (),
    series_description: str | None = None,
) -> pydicom.Dataset:
    """A DERIVED Secondary Capture of ``source`` with ``boxes`` and/or ``masks`` burned in (see the module).

    ``image``: the source frame as displayed, 2-D uint8, Rows x Columns of ``source``. ``source`` may be read with
    ``stop_before_pixels=True``; it is not modified.
    """
    header = source_header(source)
    if np.asarray(image).shape != (int(header.Rows), int(header.Columns)):
        raise ValueError(f"image shape {np.asarray(image).shape} is not the source's {header.Rows}x{header.Columns}")
    pixels = render(image, boxes=boxes, masks=masks, caption=labelled_text(algorithm.label, algorithm))
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
    pixel_spacing = None
    if spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing):
        pixel_spacing = (float(spacing[0]), float(spacing[1]))
    with quiet_person_name_warnings():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=NODE_EQUIPMENT["manufacturer"],
            pixel_spacing=pixel_spacing,
            patient_orientation=_orientation(header) or ("A", "F"),  # placeholder, emptied below when unknown
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
    if _orientation(header) is None:
        sc.PatientOrientation = ""  # type 2: unknown (highdicom insists on a value; we never invent one)
    sc.ManufacturerModelName = NODE_EQUIPMENT["manufacturer_model_name"]
    sc.SoftwareVersions = NODE_EQUIPMENT["software_versions"]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.SeriesDescription = labelled_text(series_description or f"AI result image {algorithm.name}", algorithm)
    what = f"{len(boxes)} box(es)" if boxes else f"{len(masks)} segment outline(s)"
    sc.DerivationDescription = labelled_text(f"{BANNER}: {what} by {algorithm.label}", algorithm, max_chars=1024)
    sc.SourceImageSequence = DicomSequence([_source_reference(header)])
    set_series_laterality(sc, header)
    add_processing_algorithm(sc, algorithm)
    return sc


def _orientation(header: Dataset) -> tuple[str, str] | None:
    value = header.get("PatientOrientation")
    if value and len(value) == 2 and all(str(v) for v in value):
        return (str(value[0]), str(value[1]))
    return None


def _source_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item
