"""Which files of a chest X-ray study are radiographs, and which frontal and lateral image to send.

Which files are considered (:func:`converters.cxr.build_cxr_inputs`, :func:`skip_reason`)
----------------------------------------------------------------------------------------
Headers are read without pixel data. A file is skipped, with a reason, when it cannot be read as DICOM, has no
Pixel Data element, is not an image (SR, encapsulated PDF/CDA, presentation state, key object selection,
segmentation, waveform, raw data, registration), has no Rows/Columns, has a modality other than CR, DX, RG, DR or
OT (a missing modality is accepted), is colour (radiographs are monochrome; colour means a photo or a screen
capture), is a localizer/scout, is DERIVED\\SECONDARY (annotated, reformatted or screen-captured copies), or is a
dose screen/patient protocol page (DOSE or PATIENT PROTOCOL in its descriptions).

Choosing among several images of a kind (:func:`select_views`)
--------------------------------------------------------------
Frontal: a view known from the header before one known only from the zero-shot label; then PA before a frontal of
unknown projection before AP; then the latest acquisition (AcquisitionDateTime, else AcquisitionDate+Time, else
ContentDate+Time, else SeriesDate+Time); then the highest InstanceNumber; then the path (for a stable result).
Lateral: header before zero-shot label, then the latest acquisition, then the highest InstanceNumber, then the path.

View classification itself is in :mod:`converters.cxr_views`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from converters.cxr_views import Projection, View, view_of
from converters.header_text import dicom_values, text_words

__all__ = ["ViewSelection", "image_key", "read_header", "select_views", "skip_reason"]

_NON_IMAGE_MODALITIES = {"SR", "DOC", "PR", "KO", "SEG", "REG", "RWV", "ECG", "AU", "HD", "PLAN", "RTSTRUCT",
                         "RTPLAN", "RTRECORD", "RTDOSE"}
_NON_IMAGE_SOP_CLASS_WORDS = ("SR Storage", "Encapsulated", "Presentation State", "Key Object", "Segmentation",
                              "Waveform", "Raw Data", "Registration", "Real World Value")
_RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR", "OT"}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}


def read_header(path: Path) -> tuple[Dataset, bool]:
    """The header of ``path`` without its pixel data, and whether the file has a top-level Pixel Data element.

    Raises:
        InvalidDicomError, OSError, ValueError, EOFError: the file is not readable as DICOM.
    """
    seen_pixels: list[int] = []

    def stop_at_pixels(tag: Any, vr: str | None, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            seen_pixels.append(int(tag))
            return True
        return False

    with Path(path).open("rb") as handle:
        # read_partial is what dcmread(stop_before_pixels=True) runs; the callback also tells us pixels exist.
        try:
            ds = read_partial(handle, stop_when=stop_at_pixels)
            for _elem in ds:  # convert every raw element now: a bad VR or length fails here, not mid-selection
                pass
        except (InvalidDicomError, OSError, ValueError, EOFError):
            raise
        except Exception as exc:  # broken data raise many kinds (BytesLengthException, struct.error...)
            raise InvalidDicomError(f"not readable as DICOM: {type(exc).__name__}: {exc}"[:300]) from exc
    return ds, bool(seen_pixels)


def skip_reason(ds: Dataset) -> str | None:
    """Why ``ds`` (a header) is not a chest radiograph to send to a model, or None when it may be one."""
    sop_class = ds.get("SOPClassUID")
    sop_class_name = getattr(sop_class, "name", str(sop_class or ""))
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _NON_IMAGE_MODALITIES or any(word in sop_class_name for word in _NON_IMAGE_SOP_CLASS_WORDS):
        return f"not an image (Modality {modality or 'absent'}, SOP Class {sop_class_name or 'absent'})"
    if not ds.get("Rows") or not ds.get("Columns"):
        return "not an image (no Rows/Columns)"
    if modality and modality not in _RADIOGRAPH_MODALITIES:
        return f"Modality {modality} is not a radiograph"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric and not photometric.startswith("MONOCHROME"):
        return f"colour image ({photometric}): a photo or screen capture, not a radiograph"
    image_type = [str(v).strip().upper() for v in dicom_values(ds.get("ImageType"))]
    if {"LOCALIZER", "SCOUT"} & set(image_type):
        return "localizer/scout image"
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "DERIVED\\SECONDARY image (an annotated, reformatted or captured copy)"
    for keyword in ("SeriesDescription", "ProtocolName", "ImageComments", "DerivationDescription"):
        words = text_words(ds.get(keyword))
        if "DOSE" in words or "PATIENT PROTOCOL" in " ".join(words):
            return f"dose screen or protocol page ({keyword})"
    return None



@dataclass(frozen=True)
class ViewSelection:
    """The chosen frontal and lateral files, and why each file was chosen or skipped.

    ``reasons`` has "frontal", "lateral" and "skipped:<SOP Instance UID or path>" keys.
    ``frontal_projection`` is PA/AP when the header says so (not from a zero-shot label).
    """

    frontal: Path | None
    lateral: Path | None
    reasons: dict[str, str]
    frontal_projection: Projection | None = None


@dataclass(frozen=True)
class _Candidate:
    path: Path
    ds: Dataset
    view: View
    key: str


def select_views(headers: Sequence[tuple[Path, pydicom.Dataset]],
                 classified: Mapping[str, str] | None = None) -> ViewSelection:
    """Choose the frontal and lateral images of one study from their headers.

    Non-images and unusable images (:func:`skip_reason`) and 'other' views are skipped with a reason; the rules
    and the preference among several images are in the module docstring. Headers may be read without pixel
    data, so a missing Pixel Data element is checked by :func:`converters.cxr.build_cxr_inputs`, not here.
    ``frontal`` is None when there is no frontal image (:func:`converters.cxr.build_cxr_inputs` raises
    :class:`converters.cxr.NoFrontalView`).
    """
    classified = classified or {}
    reasons: dict[str, str] = {}
    candidates: list[_Candidate] = []
    for path, ds in headers:
        key = image_key(ds, Path(path), reasons)
        why_not = skip_reason(ds)
        if why_not is not None:
            reasons[key] = why_not
            continue
        view = view_of(ds, classified.get(str(ds.get("SOPInstanceUID", "") or "")))
        if view.kind == "other":
            reasons[key] = f"not a frontal or lateral view: {view.reason}"
            continue
        candidates.append(_Candidate(Path(path), ds, view, key))

    frontal = _choose([c for c in candidates if c.view.kind == "frontal"], "frontal", reasons,
                      "header before zero-shot label, PA before unknown projection before AP, then latest "
                      "acquisition, then highest InstanceNumber")
    lateral = _choose([c for c in candidates if c.view.kind == "lateral"], "lateral", reasons,
                      "header before zero-shot label, then latest acquisition, then highest InstanceNumber")
    projection = frontal.view.projection if frontal and not frontal.view.from_classifier else None
    return ViewSelection(
        frontal=frontal.path if frontal else None,
        lateral=lateral.path if lateral else None,
        reasons=reasons,
        frontal_projection=projection,
    )


def _choose(candidates: list[_Candidate], kind: str, reasons: dict[str, str], order: str) -> _Candidate | None:
    if not candidates:
        return None
    best = max(candidates, key=_frontal_rank if kind == "frontal" else _lateral_rank)
    reasons[kind] = best.view.reason
    if len(candidates) > 1:
        reasons[kind] += f"; chosen among {len(candidates)} {kind} images ({order})"
    for other in candidates:
        if other is not best:
            reasons[other.key] = f"{kind} ({other.view.reason}), but {best.key.removeprefix('skipped:')} preferred"
    return best


def _frontal_rank(candidate: _Candidate) -> tuple[bool, int, str, int, str]:
    projection_rank = {"PA": 2, None: 1, "AP": 0}[candidate.view.projection]
    from_header, *rest = _lateral_rank(candidate)
    return (from_header, projection_rank, *rest)


def _lateral_rank(candidate: _Candidate) -> tuple[bool, str, int, str]:
    return (not candidate.view.from_classifier, _acquired(candidate.ds), _instance_number(candidate.ds),
            str(candidate.path))


def _acquired(ds: Dataset) -> str:
    """Sortable "YYYYMMDDHHMMSSffffff" of the acquisition (see the module docstring), "" when unknown."""
    value = str(ds.get("AcquisitionDateTime", "") or "").strip()
    if not value:
        for date_keyword, time_keyword in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                                           ("SeriesDate", "SeriesTime")):
            date = str(ds.get(date_keyword, "") or "").strip()
            if date:
                value = date + str(ds.get(time_keyword, "") or "").strip()
                break
    match = re.match(r"(\d+)(?:\.(\d+))?", value.replace(":", ""))
    if not match:
        return ""
    return match.group(1)[:14].ljust(14, "0") + (match.group(2) or "")[:6].ljust(6, "0")


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return -1


def image_key(ds: Dataset, path: Path, reasons: Mapping[str, str]) -> str:
    """The "skipped:..." key of an image: its SOP Instance UID, or its path when that is empty or repeated."""
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    key = f"skipped:{uid}" if uid else f"skipped:{path}"
    return key if key not in reasons else f"skipped:{uid} ({path})"

