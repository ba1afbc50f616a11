"""CT/MR series -> a NIfTI volume for MedImageParse 3D, with the correct affine.

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

Volume building (:func:`series_to_volume`):

* Every header is read first; the pixels are decoded only once the geometry checks pass.
* One orientation: ImageOrientationPatient equal within 1e-4 in every slice, else "mixed orientations".
* Same Rows, Columns and PixelSpacing (within 1e-4 mm) in every slice; one Series Instance UID, one Frame of
  Reference UID (when present); no empty SOP/Series Instance UIDs and no SOP Instance UID twice (a volume whose
  slices cannot be named cannot be referenced by the results, so empty UIDs raise rather than guess).
* Slices are sorted by their position along the normal ``n = row_cos x col_cos`` (``dot(IPP, n)``), ascending;
  InstanceNumber and file names are never used.
* Two slices closer than 0.01 mm along the normal -> "several stacks / duplicate positions" (several acquisitions,
  echoes, phases or a copied slice).
* Spacing: the gaps between neighbouring slices may deviate from their median by at most
  ``max(1 % of the median gap, 0.01 mm)``; more -> "uneven spacing / missing slices". A missing slice doubles one
  gap, so it is always caught; header rounding of oblique positions (micrometres) is tolerated.
* The slice positions must lie on the normal through the first slice (in-plane offset <= 1 % of the smallest
  pixel spacing, floor 0.01 mm), else "gantry tilt / sheared stack" (dcm2niix would resample; we refuse).
* Pixel values go through the Modality LUT (pydicom ``apply_modality_lut``: Rescale Slope/Intercept or the
  Modality LUT Sequence). The data are int16 when every value is an integer in the int16 range (the usual CT HU
  and MR case), else float32.

Voxel order and affine: ``data[i, j, k]`` is column ``i``, row ``j`` of the ``k``-th slice in ascending position
along ``n``; shape ``(Columns, Rows, slices)``. With ImageOrientationPatient ``F_row`` (first triplet, the direction
of increasing column index) and ``F_col`` (second triplet), PixelSpacing ``[row spacing, column spacing]`` and the
slice step ``g = (dot(IPP_last, n) - dot(IPP_0, n)) / (slices - 1)`` (the mean gap, so the first and the last
slice land exactly on their positions; dcm2niix takes the first gap instead, which differs by micrometres on
oblique series whose positions are rounded), the DICOM LPS voxel -> world map is

    world_LPS = IPP_0 + i * PixelSpacing[1] * F_row + j * PixelSpacing[0] * F_col + k * g * n

and the stored affine is RAS+ (NIfTI/nibabel convention): ``diag(-1, -1, 1, 1) @ A_LPS``. Voxel centres map to
the world; the NIfTI file written by :meth:`Volume.to_nifti` carries this affine as qform and sform (code 1,
scanner), units mm, and no text at all (empty descrip, aux_file, intent name: no PHI).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

__all__ = ["VolumeError", "SeriesCandidate", "Volume", "select_volume_series", "series_to_volume",
           "AXIAL_MAX_DEGREES", "ORIENTATION_TOLERANCE", "DUPLICATE_TOLERANCE_MM", "SPACING_RELATIVE_TOLERANCE",
           "SPACING_ABSOLUTE_TOLERANCE_MM", "mask_on_volume", "GRID_TOLERANCE_VOXELS"]

AXIAL_MAX_DEGREES = 30.0
ORIENTATION_TOLERANCE = 1e-4
DUPLICATE_TOLERANCE_MM = 0.01
SPACING_RELATIVE_TOLERANCE = 0.01
SPACING_ABSOLUTE_TOLERANCE_MM = 0.01
MIN_VOLUME_SLICES = 4

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_VOLUME_MODALITIES = {"CT", "MR"}
_NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC",
                         "ECG", "AU", "FID", "PLAN", "RWV"}
_NON_IMAGE_SOP_CLASS_WORDS = ("SR", "Presentation State", "Key Object", "Segmentation", "Encapsulated",
                              "Waveform", "Raw Data", "Registration", "Real World Value", "RT Structure",
                              "RT Plan", "RT Dose", "Spatial Fiducials")
_MULTI_FRAME_SOP_CLASS_WORDS = ("Enhanced", "Legacy Converted")


def _gzip(raw: bytes) -> bytes:
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal ships wheels for the usual platforms
        return gzip.compress(raw, compresslevel=1, mtime=0)
    return igzip.compress(raw, compresslevel=1, mtime=0)


class VolumeError(ValueError):
    """The series cannot become a volume; the message says what is wrong (UIDs and counts, never patient data)."""


@dataclass(frozen=True)
class SeriesCandidate:
    """The chosen series, its near-axial slice files (in input order) and why it was chosen / others skipped."""

    series_uid: str
    paths: list[Path]
    reason: str


@dataclass(frozen=True)
class Volume:
    """Voxels in NIfTI i, j, k order (column, row, slice); see the module docstring for the affine."""

    data: np.ndarray
    affine: np.ndarray
    source_sop_uids: list[str]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {uid: k for k, uid in enumerate(self.source_sop_uids)})

    def to_nifti(self) -> nibabel.Nifti1Image:
        """A Nifti1Image with qform = sform = the affine (code 1, scanner), units mm, and no text fields."""
        image = nibabel.Nifti1Image(self.data, self.affine)
        header = image.header
        header.set_qform(self.affine, code=1)
        header.set_sform(self.affine, code=1)
        header.set_xyzt_units(xyz="mm")
        header["descrip"] = b""
        header["aux_file"] = b""
        header["intent_name"] = b""
        header["db_name"] = b""
        return image

    def to_nifti_gz_bytes(self) -> bytes:
        """The ``.nii.gz`` file content (what MedImageParse 3D takes, base64-encoded by the caller).

        One gzip member, mtime 0 (reproducible bytes), at the fastest level: Intel ISA-L's level 1 (``isal``)
        where it is installed, which on a 512x512x64 CT takes about a third of zlib level 1's time for 2 %
        more bytes; else zlib level 1 (4x faster than level 6 for 2 % more bytes; each extra MB costs
        0.2 s at the endpoint's ~5 MB/s, a compression second costs a second).
        """
        return _gzip(self.to_nifti().to_bytes())

    def slice_index_of(self, sop_uid: str) -> int:
        """The k index of the slice with this SOP Instance UID; KeyError when it is not part of the volume."""
        try:
            return self._index[str(sop_uid)]
        except KeyError:
            raise KeyError(f"SOP Instance UID {sop_uid} is not a slice of this volume") from None

    def voxel_to_world(self, ijk: Any) -> np.ndarray:
        """RAS+ mm of voxel coordinates (i, j, k), shape (3,) or (N, 3); integer ijk are voxel centres."""
        points = np.asarray(ijk, dtype=float)
        homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
        return (homogeneous @ self.affine.T)[..., :3]

    def world_to_voxel(self, xyz_ras: Any) -> np.ndarray:
        """Fractional voxel coordinates (i, j, k) of RAS+ mm points, shape (3,) or (N, 3)."""
        points = np.asarray(xyz_ras, dtype=float)
        homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
        return (homogeneous @ np.linalg.inv(self.affine).T)[..., :3]


# --- series selection ----------------------------------------------------------------------------------------------


def select_volume_series(headers: Sequence[tuple[Path, pydicom.Dataset]]) -> SeriesCandidate:
    """Choose the series to send to MedImageParse 3D (rules in the module docstring).

    Headers may be read without pixel data. Raises :class:`VolumeError` listing why each series was skipped when
    nothing qualifies.
    """
    skipped: dict[str, list[str]] = {}
    usable: dict[str, list[tuple[Path, Dataset, np.ndarray]]] = {}
    for path, ds in headers:
        series = _text(ds.get("SeriesInstanceUID"))
        label = series or f"(no Series Instance UID: {Path(path).name})"
        if not series:
            skipped.setdefault(label, []).append("empty Series Instance UID")
            continue
        why_not = _skip_reason(ds)
        if why_not is not None:
            skipped.setdefault(series, []).append(why_not)
            continue
        normal = _normal(_orientation(ds))
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
        number = _int(items[0][1].get("SeriesNumber"), default=2**31)
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
    modality = _text(ds.get("Modality")).upper()
    if modality in _NON_IMAGE_MODALITIES or any(word in sop_class_name for word in _NON_IMAGE_SOP_CLASS_WORDS):
        return f"not an image (Modality {modality or 'absent'}, SOP Class {sop_class_name or 'absent'})"
    if not ds.get("Rows") or not ds.get("Columns"):
        return "not an image (no Rows/Columns)"
    image_type = [str(v).strip().upper() for v in _values(ds.get("ImageType"))]
    words = {w for keyword in ("SeriesDescription", "ProtocolName")
             for w in _text(ds.get(keyword)).upper().replace("_", " ").replace("-", " ").split()}
    if "DOSE" in sop_class_name.upper() or "DOSE" in image_type or "DOSE" in words:
        return "dose report/screen"
    if modality not in _VOLUME_MODALITIES:
        return f"Modality {modality or 'absent'} is not CT or MR"
    if {"LOCALIZER", "SCOUT"} & set(image_type):
        return "localizer/scout (ImageType)"
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "DERIVED\\SECONDARY image"
    if _int(ds.get("NumberOfFrames"), default=1) > 1 or any(w in sop_class_name for w in _MULTI_FRAME_SOP_CLASS_WORDS):
        return "multi-frame not supported yet"
    try:
        _orientation(ds), _position(ds), _pixel_spacing(ds)
    except VolumeError as exc:
        return str(exc)
    return None


def _median_gap(items: list[tuple[Path, Dataset, np.ndarray]]) -> float:
    normal = items[0][2]
    positions = np.sort([float(np.dot(_position(ds), normal)) for _, ds, _ in items])
    gaps = np.diff(positions)
    gaps = gaps[gaps > DUPLICATE_TOLERANCE_MM]
    return float(np.median(gaps)) if gaps.size else math.inf


# --- volume building -----------------------------------------------------------------------------------------------


def series_to_volume(paths: Sequence[Path]) -> Volume:
    """Read one CT/MR series (single-frame files, any order) into a :class:`Volume`; checks and axes in the
    module docstring.

    Raises:
        VolumeError: unreadable files, no pixel data, multi-frame, missing UIDs or geometry, several series,
            mixed orientations or sizes, duplicate positions, uneven spacing, a sheared stack.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise VolumeError("no files given")
    headers: list[Dataset] = []
    for path in paths:
        try:
            # Large elements (the pixels) are read only when decoded, after the geometry checks.
            headers.append(pydicom.dcmread(path, defer_size="64 KB"))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad files
            raise VolumeError(f"{path.name}: not readable as DICOM ({type(exc).__name__})") from None
    if len(headers) < 2:
        raise VolumeError(f"{len(headers)} slice: a volume needs at least 2 slices")

    _check_identity(headers, paths)
    orientation = _orientation(headers[0])
    for ds in headers[1:]:
        if np.max(np.abs(_orientation(ds) - orientation)) > ORIENTATION_TOLERANCE:
            raise VolumeError(f"mixed orientations: slice {_text(ds.get('SOPInstanceUID'))} has "
                              f"ImageOrientationPatient {_fmt(_orientation(ds))}, others {_fmt(orientation)}")
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    spacing = _pixel_spacing(headers[0])
    for ds in headers[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise VolumeError(f"mixed image sizes: {int(ds.Rows)}x{int(ds.Columns)} and {rows}x{columns} "
                              f"(rows x columns)")
        if np.max(np.abs(_pixel_spacing(ds) - spacing)) > ORIENTATION_TOLERANCE:
            raise VolumeError(f"mixed PixelSpacing: {_fmt(_pixel_spacing(ds))} and {_fmt(spacing)}")

    row_cos, col_cos = orientation[:3], orientation[3:]
    normal = _normal(orientation)
    ipps = np.array([_position(ds) for ds in headers])
    along = ipps @ normal
    order = np.argsort(along, kind="stable")
    ipps, along = ipps[order], along[order]
    headers = [headers[i] for i in order]

    gaps = np.diff(along)
    if np.any(gaps < DUPLICATE_TOLERANCE_MM):
        where = int(np.argmin(gaps))
        raise VolumeError(
            f"several stacks / duplicate positions: {int(np.sum(gaps < DUPLICATE_TOLERANCE_MM)) + 1} slices share a "
            f"position (e.g. {along[where]:.3f} mm along the normal; several acquisitions, echoes or phases?)")
    gap = float(np.median(gaps))
    tolerance = max(SPACING_RELATIVE_TOLERANCE * gap, SPACING_ABSOLUTE_TOLERANCE_MM)
    deviation = float(np.max(np.abs(gaps - gap)))
    if deviation > tolerance:
        raise VolumeError(
            f"uneven spacing / missing slices: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm, median {gap:.3f} mm "
            f"(tolerance {tolerance:.3f} mm) across {len(headers)} slices")
    in_plane = (ipps - ipps[0]) - np.outer(along - along[0], normal)
    shear_tolerance = max(SPACING_RELATIVE_TOLERANCE * float(spacing.min()), SPACING_ABSOLUTE_TOLERANCE_MM)
    if float(np.max(np.linalg.norm(in_plane, axis=1))) > shear_tolerance:
        raise VolumeError(f"gantry tilt / sheared stack: slice positions drift up to "
                          f"{float(np.max(np.linalg.norm(in_plane, axis=1))):.3f} mm off the slice normal")

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * spacing[1]
    affine_lps[:3, 1] = col_cos * spacing[0]
    # The mean gap: the first and the last slice centres land exactly on their ImagePositionPatient.
    affine_lps[:3, 2] = normal * float(along[-1] - along[0]) / (len(headers) - 1)
    affine_lps[:3, 3] = ipps[0]
    affine = _LPS_TO_RAS @ affine_lps

    # Slices are stacked as (slice, row, column) in C order: its transpose, the (column, row, slice) NIfTI array,
    # is then Fortran-contiguous, which is the order nibabel writes, so no strided copy is made anywhere.
    stack = _integer_stack(headers, rows, columns)
    if stack is None:
        stack = _float_stack(headers, rows, columns)
    data = stack.transpose(2, 1, 0)
    return Volume(data=data, affine=affine, source_sop_uids=[_text(ds.SOPInstanceUID) for ds in headers])


def _pixels(ds: Dataset, rows: int, columns: int) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors vary by plugin
        raise VolumeError(f"slice {_text(ds.get('SOPInstanceUID'))}: pixel data not decodable "
                          f"({type(exc).__name__}: {exc})") from None
    if pixels.shape != (rows, columns):
        raise VolumeError(f"slice {_text(ds.get('SOPInstanceUID'))}: pixel array {pixels.shape}, expected "
                          f"{(rows, columns)} (colour or multi-frame?)")
    return pixels


def _integral_rescale(ds: Dataset) -> tuple[int, int] | None:
    """(slope, intercept) when the Modality LUT is a linear rescale by integers (the usual CT case), else None."""
    if "ModalityLUTSequence" in ds:
        return None
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return None
    if not (slope.is_integer() and intercept.is_integer()):
        return None
    return int(slope), int(intercept)


def _integer_stack(headers: list[Dataset], rows: int, columns: int) -> np.ndarray | None:
    """int16 (slice, row, column) values when every slice rescales by integers into the int16 range, else None.

    The same values as pydicom's ``apply_modality_lut`` (``slope * stored + intercept``), computed in int32
    instead of float64: 4x less memory traffic on a CT.
    """
    rescales = [_integral_rescale(ds) for ds in headers]
    if any(r is None for r in rescales):
        return None
    stack = np.empty((len(headers), rows, columns), dtype=np.int16)
    for k, (ds, (slope, intercept)) in enumerate(zip(headers, rescales)):  # type: ignore[misc]
        pixels = _pixels(ds, rows, columns)
        if pixels.dtype.kind not in "iu":
            return None
        if slope == 1 and pixels.dtype.itemsize <= 2 and pixels.dtype.kind == "i" and intercept == 0:
            stack[k] = pixels
            continue
        values = pixels.astype(np.int32)
        if slope != 1:
            values *= slope
        if intercept:
            values += intercept
        if values.min() < -32768 or values.max() > 32767:
            return None
        stack[k] = values
    return stack


def _float_stack(headers: list[Dataset], rows: int, columns: int) -> np.ndarray:
    """(slice, row, column) values through pydicom's Modality LUT: int16 when integral and in range, else float32."""
    stack = np.empty((len(headers), rows, columns), dtype=np.float32)
    integral = True
    for k, ds in enumerate(headers):
        values = apply_modality_lut(_pixels(ds, rows, columns), ds)
        if integral and (values.dtype.kind == "f") and not np.array_equal(values, np.round(values)):
            integral = False
        stack[k] = values
    if integral and stack.size and stack.min() >= -32768 and stack.max() <= 32767:
        return stack.astype(np.int16)
    return stack


def _check_identity(headers: list[Dataset], paths: list[Path]) -> None:
    for ds, path in zip(headers, paths):
        if not _text(ds.get("SOPInstanceUID")):
            raise VolumeError(f"{path.name}: empty SOP Instance UID (the slices could not be referenced)")
        if not _text(ds.get("SeriesInstanceUID")):
            raise VolumeError(f"{path.name}: empty Series Instance UID (cannot tell which series it belongs to)")
        if "PixelData" not in ds:
            raise VolumeError(f"{path.name}: no Pixel Data (not an image)")
        sop_class_name = str(getattr(ds.get("SOPClassUID"), "name", "") or "")
        if _int(ds.get("NumberOfFrames"), default=1) > 1 \
                or any(w in sop_class_name for w in _MULTI_FRAME_SOP_CLASS_WORDS):
            raise VolumeError("multi-frame not supported yet")
    for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {_text(ds.get(keyword)) for ds in headers} - {""}
        if len(values) > 1:
            raise VolumeError(f"several {keyword}s in one volume: {', '.join(sorted(values))}")
    sop_uids = [_text(ds.SOPInstanceUID) for ds in headers]
    if len(set(sop_uids)) != len(sop_uids):
        repeated = next(uid for uid in sop_uids if sop_uids.count(uid) > 1)
        raise VolumeError(f"SOP Instance UID {repeated} given more than once")


def _orientation(ds: Dataset) -> np.ndarray:
    values = _floats(ds.get("ImageOrientationPatient"))
    if values is None or len(values) != 6:
        raise VolumeError(f"slice {_text(ds.get('SOPInstanceUID'))}: no valid ImageOrientationPatient")
    orientation = np.array(values)
    if abs(np.linalg.norm(orientation[:3]) - 1) > 1e-2 or abs(np.linalg.norm(orientation[3:]) - 1) > 1e-2 \
            or abs(float(np.dot(orientation[:3], orientation[3:]))) > 1e-2:
        raise VolumeError(f"slice {_text(ds.get('SOPInstanceUID'))}: ImageOrientationPatient is not two unit "
                          f"orthogonal vectors")
    return orientation


def _normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _position(ds: Dataset) -> np.ndarray:
    values = _floats(ds.get("ImagePositionPatient"))
    if values is None or len(values) != 3:
        raise VolumeError(f"slice {_text(ds.get('SOPInstanceUID'))}: no valid ImagePositionPatient")
    return np.array(values)


def _pixel_spacing(ds: Dataset) -> np.ndarray:
    values = _floats(ds.get("PixelSpacing"))
    if values is None or len(values) != 2 or min(values) <= 0:
        raise VolumeError(f"slice {_text(ds.get('SOPInstanceUID'))}: no valid PixelSpacing")
    return np.array(values)


def _floats(value: Any) -> list[float] | None:
    try:
        result = [float(v) for v in _values(value)]
    except (TypeError, ValueError):
        return None
    return result if result and all(math.isfinite(v) for v in result) else None


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _text(value: Any) -> str:
    return str(value or "").strip()


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.5g}" for v in values) + "]"


# --- model output back onto the volume -------------------------------------------------------------------------------

#: How far (in voxels) the mask grid may sit from the volume grid and still count as the same grid.
GRID_TOLERANCE_VOXELS = 1e-3


def mask_on_volume(mask_data: np.ndarray, mask_affine: np.ndarray, volume: Volume) -> np.ndarray:
    """A mask volume (with its own affine) resampled onto ``volume``'s voxel grid, nearest neighbour.

    The model may answer in another voxel order than it was sent (a reoriented, flipped or cropped mask): every
    voxel ``(i, j, k)`` of ``volume`` takes the mask voxel whose centre is nearest to the same world point,
    ``round(inv(mask_affine) @ volume.affine @ (i, j, k, 1))``. A mask that does not cover the whole volume (a
    reply of the wrong shape or geometry) is a :class:`VolumeError`, not a partial answer. The usual case,
    a mask on the very grid of the request, is returned as it is (a copy). ``mask_data`` is 3-D, or 4-D with one
    volume in its last axis. The result has ``volume.data.shape`` and the mask's dtype.
    """
    data = np.asarray(mask_data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"a mask volume must be 3-D, got shape {list(np.shape(mask_data))}")
    mask_affine = np.asarray(mask_affine, dtype=np.float64)
    if mask_affine.shape != (4, 4) or not np.all(np.isfinite(mask_affine)) or abs(np.linalg.det(mask_affine)) < 1e-12:
        raise VolumeError("the mask's affine is not an invertible 4x4 matrix")
    shape = volume.data.shape[:3]
    to_mask = np.linalg.inv(mask_affine) @ volume.affine  # volume voxel -> mask voxel
    if data.shape == shape and np.allclose(to_mask, np.eye(4), atol=GRID_TOLERANCE_VOXELS):
        return data.copy()
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    landed = np.rint((corners @ to_mask.T)[:, :3])
    if np.any(landed < 0) or np.any(landed > np.asarray(data.shape) - 1):
        raise VolumeError(f"the mask (shape {list(data.shape)}) does not cover the {list(shape)} volume it was asked "
                          f"for: a reply of the wrong shape or geometry")
    out = np.zeros(shape, dtype=data.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    plane = np.stack([ii.ravel(), jj.ravel()], axis=0).astype(np.float64)  # (2, n) of this slice's (i, j)
    rotation, shift = to_mask[:3, :3], to_mask[:3, 3]
    in_plane = rotation[:, :2] @ plane
    for k in range(shape[2]):
        coords = np.rint(in_plane + (rotation[:, 2] * k + shift)[:, None]).astype(np.int64)
        inside = np.all((coords >= 0) & (coords < np.asarray(data.shape)[:, None]), axis=0)
        values = np.zeros(plane.shape[1], dtype=data.dtype)
        values[inside] = data[coords[0, inside], coords[1, inside], coords[2, inside]]
        out[:, :, k] = values.reshape(shape[0], shape[1])
    return out
