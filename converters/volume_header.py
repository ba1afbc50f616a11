"""The header values a CT/MR volume is built from: slice geometry (orientation, normal, position, pixel spacing)
and small value readers, plus :class:`VolumeError`, the one error of series selection and volume building."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

__all__ = ["DUPLICATE_TOLERANCE_MM", "MULTI_FRAME_SOP_CLASS_WORDS", "VolumeError", "float_values", "fmt_vector",
           "image_orientation", "image_position", "int_value", "pixel_spacing", "slice_normal", "text_value",
           "value_list"]

#: Two slices closer than this along the normal share a position (several stacks or a copied slice).
DUPLICATE_TOLERANCE_MM = 0.01
#: SOP class name words of multi-frame image objects (not supported yet).
MULTI_FRAME_SOP_CLASS_WORDS = ("Enhanced", "Legacy Converted")


class VolumeError(ValueError):
    """The series cannot become a volume; the message says what is wrong (UIDs and counts, never patient data)."""


def image_orientation(ds: Dataset) -> np.ndarray:
    """ImageOrientationPatient as 6 floats (row then column direction cosines); VolumeError unless two unit
    orthogonal vectors."""
    values = float_values(ds.get("ImageOrientationPatient"))
    if values is None or len(values) != 6:
        raise VolumeError(f"slice {text_value(ds.get('SOPInstanceUID'))}: no valid ImageOrientationPatient")
    orientation = np.array(values)
    if abs(np.linalg.norm(orientation[:3]) - 1) > 1e-2 or abs(np.linalg.norm(orientation[3:]) - 1) > 1e-2 \
            or abs(float(np.dot(orientation[:3], orientation[3:]))) > 1e-2:
        raise VolumeError(f"slice {text_value(ds.get('SOPInstanceUID'))}: ImageOrientationPatient is not two unit "
                          f"orthogonal vectors")
    return orientation


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """The unit slice normal ``row_cos x col_cos`` of an ImageOrientationPatient."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def image_position(ds: Dataset) -> np.ndarray:
    """ImagePositionPatient as 3 floats (mm, LPS); VolumeError when absent or invalid."""
    values = float_values(ds.get("ImagePositionPatient"))
    if values is None or len(values) != 3:
        raise VolumeError(f"slice {text_value(ds.get('SOPInstanceUID'))}: no valid ImagePositionPatient")
    return np.array(values)


def pixel_spacing(ds: Dataset) -> np.ndarray:
    """PixelSpacing as [row spacing, column spacing] (mm, positive); VolumeError when absent or invalid."""
    values = float_values(ds.get("PixelSpacing"))
    if values is None or len(values) != 2 or min(values) <= 0:
        raise VolumeError(f"slice {text_value(ds.get('SOPInstanceUID'))}: no valid PixelSpacing")
    return np.array(values)


def float_values(value: Any) -> list[float] | None:
    """A DICOM value as finite floats, or None when empty, not numeric or not finite."""
    try:
        result = [float(v) for v in value_list(value)]
    except (TypeError, ValueError):
        return None
    return result if result and all(math.isfinite(v) for v in result) else None


def value_list(value: Any) -> list[Any]:
    """A DICOM value as a list (multi-valued, single or absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def text_value(value: Any) -> str:
    """A value as stripped text ("" when absent)."""
    return str(value or "").strip()


def int_value(value: Any, default: int) -> int:
    """A value as an int, ``default`` when absent or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def fmt_vector(values: np.ndarray) -> str:
    """A short printable form of a vector, for error messages."""
    return "[" + ", ".join(f"{v:.5g}" for v in values) + "]"
