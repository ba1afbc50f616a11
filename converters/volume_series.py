"""Which CT/MR series of a study to send to MedImageParse 3D.

Series selection (:func:`select_volume_series`), documented default:

* Skipped, with a reason per series: non-image objects (no Rows/Columns, or an SR/PR/SEG/KO/... SOP class),
  modalities other than CT/MR, dose reports and dose screens (SOP class name or ImageType, SeriesDescription,
  ProtocolName with the word DOSE), localizers/scouts (ImageType LOCALIZER or SCOUT, or a series with only 1-3
  usable slices), DERIVED\\SECONDARY images (screen captures, reformats, annotated copies), multi-frame objects
  (not supported yet), images without geometry (ImageOrientationPatient/ImagePositionPatient/PixelSpacing), and
  headers with an empty Series Instance UID.
* Among the rest, the largest axial volume wins: most slices whose normal is within 30 degrees of the patient
  axis (|n_z| >= cos 30 deg); ties -> the thinnest slice spacing (median gap of the slice positions along the
  normal), then the lowest SeriesNumber, then the Series Instance UID (so the choice is deterministic).
  Only the near-axial slices of the chosen series are returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from converters.volume_header import (DUPLICATE_TOLERANCE_MM, MULTI_FRAME_SOP_CLASS_WORDS, VolumeError,
                                      image_orientation, image_position, int_value, pixel_spacing, slice_normal,
                                      text_value, value_list)

__all__ = ["AXIAL_MAX_DEGREES", "MIN_VOLUME_SLICES", "SeriesCandidate", "select_volume_series"]

AXIAL_MAX_DEGREES = 30.0
MIN_VOLUME_SLICES = 4

_VOLUME_MODALITIES = {"CT", "MR"}
_NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC",
                         "ECG", "AU", "FID", "PLAN", "RWV"}
_NON_IMAGE_SOP_CLASS_WORDS = ("SR", "Presentation State", "Key Object", "Segmentation", "Encapsulated",
                              "Waveform", "Raw Data", "Registration", "Real World Value", "RT Structure",
                              "RT Plan", "RT Dose", "Spatial Fiducials")


@dataclass(frozen=True)
class SeriesCandidate:
    """The chosen series, its near-axial slice files (in input order) and why it was chosen / others skipped."""

    series_uid: str
    paths: list[Path]
    reason: str


def select_volume_series(headers: Sequence[tuple[Path, pydicom.Dataset]]) -> SeriesCandidate:
    """Choose the series to send to MedImageParse 3D (rules in the module docstring).

    Headers may be read without pixel data. Raises :class:`VolumeError` listing why each series was skipped when
    nothing qualifies.
    """
    skipped: dict[str, list[str]] = {}
    usable: dict[str, list[tuple[Path, Dataset, np.ndarray]]] = {}
    for path, ds in headers:
        series = text_value(ds.get("SeriesInstanceUID"))
        label = series or f"(no Series Instance UID: {Path(path).name})"
        if not series:
            skipped.setdefault(label, []).append("empty Series Instance UID")
            continue
        why_not = _skip_reason(ds)
        if why_not is not None:
            skipped.setdefault(series, []).append(why_not)
            continue
        normal = slice_normal(image_orientation(ds))
        if abs(normal[2]) < math.cos(math.radians(AXIAL_MAX_DEGREES)):
            skipped.setdefault(series, []).append(f"not axial (more than {AXIAL_MAX_DEGREES:g} degrees off)")
            continue
        usable.setdefault(series, []).append((Path(path), ds, normal))

    reasons: dict[str, str] = {}
    ranked: list[tuple[tuple[int, float, int, str], str]] = []
    for series, items in usable.items():
        if len(items) < MIN_VOLUME_SLICES:
            reasons[series] = f"localizer/scout ({len(items)} axial slice{'s' if len(items) > 1 else ''})"
            continue
        spacing = _median_gap(items)
        number = int_value(items[0][1].get("SeriesNumber"), default=2**31)
        ranked.append(((-len(items), spacing, number, series), series))
    for series, why in skipped.items():
        if series not in usable:
            reasons[series] = "; ".join(sorted(set(why)))
    if not ranked:
        listing = "; ".join(f"series {uid}: {why}" for uid, why in sorted(reasons.items())) or "no headers"
        raise VolumeError(f"no CT/MR series usable as a volume: {listing}")
    ranked.sort()
    (count, spacing, _, _), best = ranked[0]
    reason = (f"largest axial volume: {-count} slices, spacing {spacing:.3g} mm "
              f"(most near-axial slices, then thinnest spacing, then lowest SeriesNumber)")
    others = [f"{uid}: {why}" for uid, why in sorted(reasons.items())]
    others += [f"{uid}: smaller or later axial series ({-key[0]} slices)" for key, uid in ranked[1:]]
    if best in skipped:
        others.append(f"{best} (some files): {'; '.join(sorted(set(skipped[best])))}")
    if others:
        reason += "; skipped " + "; ".join(others)
    return SeriesCandidate(series_uid=best, paths=[path for path, _, _ in usable[best]], reason=reason)


def _skip_reason(ds: Dataset) -> str | None:
    sop_class = ds.get("SOPClassUID")
    sop_class_name = str(getattr(sop_class, "name", "") or sop_class or "")
    modality = text_value(ds.get("Modality")).upper()
    if modality in _NON_IMAGE_MODALITIES or any(word in sop_class_name for word in _NON_IMAGE_SOP_CLASS_WORDS):
        return f"not an image (Modality {modality or 'absent'}, SOP Class {sop_class_name or 'absent'})"
    if not ds.get("Rows") or not ds.get("Columns"):
        return "not an image (no Rows/Columns)"
    image_type = [str(v).strip().upper() for v in value_list(ds.get("ImageType"))]
    words = {w for keyword in ("SeriesDescription", "ProtocolName")
             for w in text_value(ds.get(keyword)).upper().replace("_", " ").replace("-", " ").split()}
    if "DOSE" in sop_class_name.upper() or "DOSE" in image_type or "DOSE" in words:
        return "dose report/screen"
    if modality not in _VOLUME_MODALITIES:
        return f"Modality {modality or 'absent'} is not CT or MR"
    if {"LOCALIZER", "SCOUT"} & set(image_type):
        return "localizer/scout (ImageType)"
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "DERIVED\\SECONDARY image"
    if int_value(ds.get("NumberOfFrames"), default=1) > 1 \
            or any(w in sop_class_name for w in MULTI_FRAME_SOP_CLASS_WORDS):
        return "multi-frame not supported yet"
    try:
        image_orientation(ds), image_position(ds), pixel_spacing(ds)
    except VolumeError as exc:
        return str(exc)
    return None


def _median_gap(items: list[tuple[Path, Dataset, np.ndarray]]) -> float:
    normal = items[0][2]
    positions = np.sort([float(np.dot(image_position(ds), normal)) for _, ds, _ in items])
    gaps = np.diff(positions)
    gaps = gaps[gaps > DUPLICATE_TOLERANCE_MM]
    return float(np.median(gaps)) if gaps.size else math.inf
