"""Images -> MedImageInsight inputs: lossless 8-bit PNGs, aspect ratio kept, optionally downscaled to 512.

Pixels go through :func:`converters.pixels.to_uint8` (Modality LUT, VOI LUT or window, MONOCHROME1, colour ->
luma), so the model sees what a viewer shows. The server resizes every image to 512x512 itself; ``resize`` (the
rule's ``params.resize``, e.g. 512) shrinks the longer side to that many pixels on the client (Lanczos, never
upscaling) to save bandwidth. A multi-frame image is represented by its middle frame.

Files that are not images for the model are skipped with a reason (:func:`skip_reason`): no pixel data, a
non-image SOP class or modality (SR, PR, SEG, KO, documents, waveforms), no Rows/Columns, a localizer/scout, or a
dose screen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from converters.pixels import to_uint8

__all__ = ["InsightImage", "skip_reason", "to_insight_image", "read_insight_image"]

MODEL_SIDE = 512
_NON_IMAGE_MODALITIES = {"SR", "DOC", "PR", "KO", "SEG", "REG", "RWV", "ECG", "AU", "HD", "PLAN", "RTSTRUCT",
                         "RTPLAN", "RTRECORD", "RTDOSE", "FID", "RAW"}
_NON_IMAGE_SOP_CLASS_WORDS = ("SR Storage", "Encapsulated", "Presentation State", "Key Object", "Segmentation",
                              "Waveform", "Raw Data", "Registration")


@dataclass(frozen=True)
class InsightImage:
    """The PNG sent for one image, with its identity."""

    png: bytes = field(repr=False)
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    width: int
    height: int
    frame: int


def skip_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is not an image for the embedding model, or None when it is one."""
    sop_class = ds.get("SOPClassUID")
    name = getattr(sop_class, "name", str(sop_class or ""))
    if any(word in name for word in _NON_IMAGE_SOP_CLASS_WORDS):
        return f"not an image ({name})"
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _NON_IMAGE_MODALITIES:
        return f"not an image (Modality {modality})"
    if not ds.get("Rows") or not ds.get("Columns"):
        return "no Rows/Columns"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "a localizer/scout"
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ImageComments")).upper()
    if "DOSE" in text and ("REPORT" in text or "SCREEN" in text or "INFO" in text):
        return "a dose screen"
    return None


def to_insight_image(ds: Dataset, *, resize: int | None = None) -> InsightImage:
    """The lossless PNG of ``ds`` (middle frame of a multi-frame image), longer side at most ``resize``."""
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be at least 1, got {resize}")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = frames // 2 if frames > 1 else 0
    pixels = to_uint8(ds, frame)
    rows, columns = pixels.shape
    image = Image.fromarray(pixels)
    if resize is not None and max(rows, columns) > resize:
        factor = resize / max(rows, columns)
        image = image.resize((max(1, round(columns * factor)), max(1, round(rows * factor))),
                             Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="PNG")  # PNG is lossless; 8-bit grey ("L")
    return InsightImage(png=buffer.getvalue(), sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
                        width=image.width, height=image.height, frame=frame)


def read_insight_image(path: Path | str, *, resize: int | None = None) -> InsightImage:
    """Read a DICOM file and convert it (``ValueError`` with the reason when it is not an image for the model)."""
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("no pixel data")
    why = skip_reason(ds)
    if why is not None:
        raise ValueError(why)
    return to_insight_image(ds, resize=resize)
