"""Model masks -> the values a DICOM SEG stores: BINARY (0/1) or FRACTIONAL (probabilities 0..1).

Documented choice, shared by MedImageParse 2D and 3D (rule param ``segmentation_type``):

- A mask's full scale is 1 when its maximum is at most 1 (bool, 0/1 integers, probabilities), else 255 (the
  uint8 0..255 masks of MedImageParse 2D; the sample notebooks threshold them at > 128).
- ``auto`` (default): FRACTIONAL when some value lies strictly between 0 and full scale (the model gave
  probabilities), else BINARY. ``binary``: always BINARY. ``fractional``: always FRACTIONAL.
- BINARY: inside = value > ``threshold`` x full scale. FRACTIONAL: value / full scale (PROBABILITY, stored by
  highdicom as 0..255).
"""

from __future__ import annotations

import numpy as np

__all__ = ["full_scale", "segment_values"]


def full_scale(values: np.ndarray) -> float:
    """1.0 for masks whose maximum is at most 1, else 255.0; ``ValueError`` for negative, non-finite or > 255."""
    if values.size == 0:
        return 1.0
    low, high = float(np.min(values)), float(np.max(values))
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
        raise ValueError(f"mask values from {low:g} to {high:g}: expected 0..1 or 0..255")
    return 1.0 if high <= 1.0 else 255.0


def segment_values(masks: np.ndarray, *, mode: str = "auto", threshold: float = 0.5) -> tuple[np.ndarray, bool]:
    """``(values, fractional)`` for :func:`dicom_out.seg.build_segmentation` (see the module docstring).

    ``threshold`` is a fraction of full scale (0.5 for probabilities; 128 / 255 for MedImageParse 2D).
    """
    if mode not in ("auto", "binary", "fractional"):
        raise ValueError(f"segmentation type {mode!r}: allowed auto, binary, fractional")
    masks = np.asarray(masks)
    if masks.dtype == np.bool_:
        return (masks.astype(np.float32), True) if mode == "fractional" else (masks, False)
    scale = full_scale(masks)
    soft = bool(np.any((masks > 0) & (masks < scale)))
    fractional = mode == "fractional" or (mode == "auto" and soft)
    if fractional:
        return np.clip(masks.astype(np.float32) / np.float32(scale), 0.0, 1.0), True
    return masks > threshold * scale, False
