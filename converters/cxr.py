"""Chest X-ray study -> the inputs of the report models: chosen views as PNGs plus the clinical text.

Which files are considered (:func:`build_cxr_inputs`, :func:`skip_reason`)
-------------------------------------------------------------------------
Headers are read without pixel data. A file is skipped, with a reason, when it cannot be read as DICOM, has no
Pixel Data element, is not an image (SR, encapsulated PDF/CDA, presentation state, key object selection,
segmentation, waveform, raw data, registration), has no Rows/Columns, has a modality other than CR, DX, RG, DR or
OT (a missing modality is accepted), is colour (radiographs are monochrome; colour means a photo or a screen
capture), is a localizer/scout, is DERIVED\\SECONDARY (annotated, reformatted or screen-captured copies), or is a
dose screen/patient protocol page (DOSE or PATIENT PROTOCOL in its descriptions).

View classification (:func:`classify_view`), first rule that decides wins
--------------------------------------------------------------------------
1. ViewPosition (0018,5101): PA, AP -> frontal; LL, RL, LATERAL, LAT -> lateral; the other standard values
   (decubitus RLD/LLD, obliques RLO/LLO/RAO/LAO/RPO/LPO) -> other.
2. ViewCodeSequence (0054,0220), first item: CID 4010 "DX View" codes as pydicom's code tables give them:
   postero-anterior SCT 272479007 (legacy SRT R-40888, SNM3 R-10214), antero-posterior SCT 399348003 (SRT
   R-10206), frontal SCT 399033003 (SRT R-10202) -> frontal; lateral SCT 399067008 (SRT R-102CD), left lateral SCT
   399173006 (SRT R-10236), right lateral SCT 399198007 (SRT R-10232) -> lateral; any other CID 4010 code (obliques,
   axial...) -> other. An unknown code falls back to the keywords of its Code Meaning (as in rule 4).
3. PatientOrientation (0020,0020): its first value is the direction of the rows (left to right), its second the
   direction of the columns (top to bottom), dominant letter first. A frontal image lies in the coronal plane:
   one axis L/R and the other H/F (PA displayed as usual is ``L\\F``). A lateral lies in the sagittal plane: one
   axis A/P and the other H/F (``A\\F`` or ``P\\F``). Anything else does not decide. This gives no PA/AP.
4. Keywords, in SeriesDescription, ProtocolName, AcquisitionDeviceProcessingDescription, ImageComments, then
   StudyDescription (per-image text before the study-level one): PA, POSTEROANTERIOR -> frontal (PA); AP,
   ANTEROPOSTERIOR -> frontal (AP); FRONTAL -> frontal; LAT, LATERAL -> lateral. The first attribute that names
   exactly one of frontal/lateral decides; one naming both (``PA AND LAT``) is skipped. DECUBITUS, DECUB, OBLIQUE,
   OBL or LORDOTIC in a per-image attribute make the image 'other'.
5. The zero-shot label from ``classified`` (SOP Instance UID -> label such as "x-ray chest posteroanterior"),
   read with the keywords of rule 4; used only when the header decided nothing. Its PA/AP is used for ranking
   (below any header-classified image), never stated in the technique text.
Otherwise the image is 'other' and skipped with a reason.

Choosing among several images of a kind (:func:`select_views`)
--------------------------------------------------------------
Frontal: a view known from the header before one known only from the zero-shot label; then PA before a frontal of
unknown projection before AP; then the latest acquisition (AcquisitionDateTime, else AcquisitionDate+Time, else
ContentDate+Time, else SeriesDate+Time); then the highest InstanceNumber; then the path (for a stable result).
Lateral: header before zero-shot label, then the latest acquisition, then the highest InstanceNumber, then the path.

Clinical text (:func:`clinical_text`)
-------------------------------------
indication: ReasonForTheRequestedProcedure (0040,1002); else the first non-empty ReasonForTheRequestedProcedure
in RequestAttributesSequence (0040,0275); else ReasonForStudy (0032,1030); else AdmittingDiagnosesDescription
(0008,1080). technique: RequestedProcedureDescription (0032,1060), else PerformedProcedureStepDescription
(0040,0254), else StudyDescription (0008,1030), followed by the views found ("PA and lateral views of the chest").
comparison: the text after a "Comparison:" label in RequestedProcedureComments (0040,1400),
ImagingServiceRequestComments (0040,2400) or StudyComments (0032,4000); DICOM has no dedicated attribute.
Empty values are None; nothing is written that the header does not say.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.sr import Collection
from pydicom.sr.coding import Code

from converters.pixels import to_uint8

log = logging.getLogger(__name__)

__all__ = [
    "ClinicalText", "CxrInputs", "ModelImage", "NoFrontalView", "Projection", "ViewKind", "ViewSelection",
    "build_cxr_inputs", "classify_view", "clinical_text", "read_header", "select_views", "skip_reason",
    "to_model_image", "views_phrase",
]

ViewKind = Literal["frontal", "lateral", "other"]
Projection = Literal["PA", "AP"]


# --- model image ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelImage:
    """An 8-bit grayscale lossless PNG of one image and the exact mapping back to the source pixel grid.

    Coordinates are continuous, origin at the top-left corner of the top-left pixel, x along columns.
    """

    png: bytes = field(repr=False)
    sop_instance_uid: str
    source_rows: int
    source_columns: int
    png_width: int
    png_height: int
    scale_x: float  # source column = png x * scale_x
    scale_y: float  # source row = png y * scale_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """PNG (x, y) -> source (column, row), as floats."""
        # Multiply before dividing so the PNG corners land exactly on the source corners.
        return x * self.source_columns / self.png_width, y * self.source_rows / self.png_height

    def from_source(self, column: float, row: float) -> tuple[float, float]:
        """Source (column, row) -> PNG (x, y), as floats."""
        return column * self.png_width / self.source_columns, row * self.png_height / self.source_rows


def to_model_image(ds: Dataset, *, max_side: int | None = None, frame: int = 0) -> ModelImage:
    """Display-ready PNG of ``ds`` (see :func:`converters.pixels.to_uint8`).

    Full resolution by default; with ``max_side`` an image whose longer side exceeds it is downscaled with
    Lanczos, aspect kept (each side rounded to whole pixels, so ``scale_x`` and ``scale_y`` may differ slightly).
    Never upscales.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    pixels = to_uint8(ds, frame)
    rows, columns = pixels.shape
    image = Image.fromarray(pixels)
    width, height = columns, rows
    if max_side is not None and max(rows, columns) > max_side:
        factor = max_side / max(rows, columns)
        width, height = max(1, round(columns * factor)), max(1, round(rows * factor))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return ModelImage(
        png=buffer.getvalue(),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        source_rows=rows,
        source_columns=columns,
        png_width=width,
        png_height=height,
        scale_x=columns / width,
        scale_y=rows / height,
    )


# --- which files are images ----------------------------------------------------------------------------------------

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
    image_type = [str(v).strip().upper() for v in _values(ds.get("ImageType"))]
    if {"LOCALIZER", "SCOUT"} & set(image_type):
        return "localizer/scout image"
    if image_type[:2] == ["DERIVED", "SECONDARY"]:
        return "DERIVED\\SECONDARY image (an annotated, reformatted or captured copy)"
    for keyword in ("SeriesDescription", "ProtocolName", "ImageComments", "DerivationDescription"):
        words = _words(ds.get(keyword))
        if "DOSE" in words or "PATIENT PROTOCOL" in " ".join(words):
            return f"dose screen or protocol page ({keyword})"
    return None


# --- view classification -------------------------------------------------------------------------------------------

_VIEW_POSITIONS: dict[str, tuple[ViewKind, Projection | None]] = {
    "PA": ("frontal", "PA"), "AP": ("frontal", "AP"),
    "LL": ("lateral", None), "RL": ("lateral", None), "LATERAL": ("lateral", None), "LAT": ("lateral", None),
}
_OTHER_VIEW_POSITIONS = {"RLD", "LLD", "RLO", "LLO", "RAO", "LAO", "RPO", "LPO"}

_DX_VIEWS = Collection("CID4010")
_VIEW_CODES: dict[Code, tuple[ViewKind, Projection | None]] = {
    _DX_VIEWS.PosteroAnterior: ("frontal", "PA"),
    _DX_VIEWS.AnteroPosterior: ("frontal", "AP"),
    _DX_VIEWS.Frontal: ("frontal", None),
    _DX_VIEWS.LateralProjection: ("lateral", None),
    _DX_VIEWS.LeftLateral: ("lateral", None),
    _DX_VIEWS.RightLateral: ("lateral", None),
}
# Pre-SNOMED-CT codes still written by older modalities. pydicom maps SRT codes to SCT when comparing codes;
# R-10214 (postero-anterior in SNOMED 3, dcm4che and older DICOM editions) is not in its map.
_LEGACY_VIEW_CODES: dict[tuple[str, str], tuple[ViewKind, Projection | None]] = {
    ("SRT", "R-10214"): ("frontal", "PA"), ("SNM3", "R-10214"): ("frontal", "PA"),
    ("SNM3", "R-10206"): ("frontal", "AP"), ("SNM3", "R-10202"): ("frontal", None),
    ("SNM3", "R-102CD"): ("lateral", None), ("SNM3", "R-10236"): ("lateral", None),
    ("SNM3", "R-10232"): ("lateral", None),
}

_PA_WORDS = {"PA", "POSTEROANTERIOR"}
_AP_WORDS = {"AP", "ANTEROPOSTERIOR"}
_FRONTAL_WORDS = {"FRONTAL"}
_LATERAL_WORDS = {"LAT", "LATERAL"}
_OTHER_VIEW_WORDS = {"DECUBITUS", "DECUB", "OBLIQUE", "OBL", "LORDOTIC"}
_IMAGE_TEXT_KEYWORDS = ("SeriesDescription", "ProtocolName", "AcquisitionDeviceProcessingDescription",
                        "ImageComments")
_STUDY_TEXT_KEYWORDS = ("StudyDescription",)


@dataclass(frozen=True)
class _View:
    kind: ViewKind
    projection: Projection | None
    reason: str
    from_classifier: bool = False


def classify_view(ds: Dataset, classified: str | None = None) -> tuple[ViewKind, str]:
    """The view of one image and a short human reason, e.g. ``("frontal", "ViewPosition=PA")``.

    ``classified`` is the zero-shot label for this image, used only when the header decides nothing. The order of
    the rules is in the module docstring.
    """
    view = _classify(ds, classified)
    return view.kind, view.reason


def _classify(ds: Dataset, classified: str | None) -> _View:
    for rule in (_by_view_position, _by_view_code, _by_patient_orientation, _by_description):
        view = rule(ds)
        if view is not None:
            return view
    if classified and classified.strip():
        found = _words_view(_words(classified), allow_other=True)
        label = classified.strip()
        if found is not None and found[0] != "other":
            return _View(found[0], found[1], f"zero-shot label {label!r}", from_classifier=True)
        return _View("other", None, f"zero-shot label {label!r} is not a frontal or lateral view",
                     from_classifier=True)
    return _View("other", None, "no view in ViewPosition, ViewCodeSequence, PatientOrientation or descriptions, "
                                "and no zero-shot label")


def _by_view_position(ds: Dataset) -> _View | None:
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value in _VIEW_POSITIONS:
        kind, projection = _VIEW_POSITIONS[value]
        return _View(kind, projection, f"ViewPosition={value}")
    if value in _OTHER_VIEW_POSITIONS:
        return _View("other", None, f"ViewPosition={value} (decubitus or oblique)")
    return None


def _by_view_code(ds: Dataset) -> _View | None:
    items = ds.get("ViewCodeSequence")
    if not items:
        return None
    item = items[0]
    value = str(item.get("CodeValue", "") or "").strip()
    scheme = str(item.get("CodingSchemeDesignator", "") or "").strip().upper()
    meaning = str(item.get("CodeMeaning", "") or "").strip()
    described = f"ViewCodeSequence {scheme} {value} {meaning!r}"
    found = _LEGACY_VIEW_CODES.get((scheme, value))
    if found is None and value and scheme:
        try:
            code = Code(value, scheme, meaning or value)
        except Exception:  # a malformed code item just does not decide
            code = None
        if code is not None:
            found = next((view for known, view in _VIEW_CODES.items() if known == code), None)
            if found is None and any(code == known for known in _DX_VIEWS.concepts.values()):
                return _View("other", None, f"{described} (a DX view that is neither frontal nor lateral)")
    if found is None:
        found = _words_view(_words(meaning), allow_other=True)
    if found is None:
        return None
    return _View(found[0], found[1], described)


def _by_patient_orientation(ds: Dataset) -> _View | None:
    values = [str(v).strip().upper() for v in _values(ds.get("PatientOrientation"))]
    if len(values) != 2 or not all(values) or not all(set(v) <= set("APRLHF") for v in values):
        return None
    axes = {values[0][0], values[1][0]}  # dominant letter of each axis
    shown = "\\".join(values)
    if axes & set("HF") and axes & set("LR"):
        return _View("frontal", None, f"PatientOrientation={shown} (coronal: frontal)")
    if axes & set("HF") and axes & set("AP"):
        return _View("lateral", None, f"PatientOrientation={shown} (sagittal: lateral)")
    return None


def _by_description(ds: Dataset) -> _View | None:
    for keyword in _IMAGE_TEXT_KEYWORDS + _STUDY_TEXT_KEYWORDS:
        words = _words(ds.get(keyword))
        found = _words_view(words, allow_other=keyword in _IMAGE_TEXT_KEYWORDS)
        if found is None:
            continue
        kind, projection = found
        matched = sorted(set(words) & (_PA_WORDS | _AP_WORDS | _FRONTAL_WORDS | _LATERAL_WORDS | _OTHER_VIEW_WORDS))
        return _View(kind, projection, f"{keyword} mentions {', '.join(matched)}")
    return None


def _words_view(words: Sequence[str], *, allow_other: bool) -> tuple[ViewKind, Projection | None] | None:
    """The one view a text names, or None when it names none or both frontal and lateral."""
    present = set(words)
    if allow_other and present & _OTHER_VIEW_WORDS:
        return ("other", None)
    if present & _OTHER_VIEW_WORDS:
        return None
    pa, ap = bool(present & _PA_WORDS), bool(present & _AP_WORDS)
    frontal = pa or ap or bool(present & _FRONTAL_WORDS)
    lateral = bool(present & _LATERAL_WORDS)
    if frontal == lateral:
        return None
    if lateral:
        return ("lateral", None)
    return ("frontal", "PA" if pa and not ap else "AP" if ap and not pa else None)


# --- selection -----------------------------------------------------------------------------------------------------


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


class NoFrontalView(Exception):
    """No usable frontal chest image; the message lists what was seen, ``selection`` holds the details."""

    def __init__(self, message: str, selection: ViewSelection | None = None) -> None:
        super().__init__(message)
        self.selection = selection


@dataclass(frozen=True)
class _Candidate:
    path: Path
    ds: Dataset
    view: _View
    key: str


def select_views(headers: Sequence[tuple[Path, pydicom.Dataset]],
                 classified: Mapping[str, str] | None = None) -> ViewSelection:
    """Choose the frontal and lateral images of one study from their headers.

    Non-images and unusable images (:func:`skip_reason`) and 'other' views are skipped with a reason; the rules
    and the preference among several images are in the module docstring. Headers may be read without pixel
    data, so a missing Pixel Data element is checked by :func:`build_cxr_inputs`, not here. ``frontal`` is None
    when there is no frontal image (:func:`build_cxr_inputs` raises :class:`NoFrontalView`).
    """
    classified = classified or {}
    reasons: dict[str, str] = {}
    candidates: list[_Candidate] = []
    for path, ds in headers:
        key = _key(ds, Path(path), reasons)
        why_not = skip_reason(ds)
        if why_not is not None:
            reasons[key] = why_not
            continue
        view = _classify(ds, classified.get(str(ds.get("SOPInstanceUID", "") or "")))
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


def _key(ds: Dataset, path: Path, reasons: Mapping[str, str]) -> str:
    """The "skipped:..." key of an image: its SOP Instance UID, or its path when that is empty or repeated."""
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    key = f"skipped:{uid}" if uid else f"skipped:{path}"
    return key if key not in reasons else f"skipped:{uid} ({path})"


# --- clinical text -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClinicalText:
    """Free text from the order/study for the report model; None where the header has none."""

    indication: str | None
    technique: str | None
    comparison: str | None


_COMPARISON = re.compile(r"\bcomparisons?\s*:\s*(.+)", re.IGNORECASE)


def clinical_text(ds: pydicom.Dataset, *, views: str | None = None) -> ClinicalText:
    """Indication, technique and comparison from ``ds`` (attributes in the module docstring).

    ``views`` (e.g. ``views_phrase(selection)``) is appended to the technique.
    """
    indication = _first_text(ds.get("ReasonForTheRequestedProcedure"),
                             *(item.get("ReasonForTheRequestedProcedure")
                               for item in (ds.get("RequestAttributesSequence") or [])),
                             ds.get("ReasonForStudy"), ds.get("AdmittingDiagnosesDescription"))
    description = _first_text(ds.get("RequestedProcedureDescription"), ds.get("PerformedProcedureStepDescription"),
                              ds.get("StudyDescription"))
    parts = [part.rstrip(". ") for part in (description, _clean(views)) if part]
    technique = ". ".join(parts) + "." if parts else None
    comparison = None
    for keyword in ("RequestedProcedureComments", "ImagingServiceRequestComments", "StudyComments"):
        match = _COMPARISON.search(_joined(ds.get(keyword)))
        if match and _clean(match.group(1)):
            comparison = _clean(match.group(1))
            break
    return ClinicalText(indication=indication, technique=technique, comparison=comparison)


def views_phrase(selection: ViewSelection) -> str | None:
    """ "PA and lateral views of the chest", "AP view of the chest", "Frontal view of the chest"... or None."""
    if selection.frontal is None:
        return "Lateral view of the chest" if selection.lateral else None
    frontal = selection.frontal_projection or "Frontal"
    return f"{frontal} and lateral views of the chest" if selection.lateral else f"{frontal} view of the chest"


# --- everything together -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CxrInputs:
    """What a chest X-ray report model needs from one study."""

    frontal: ModelImage
    lateral: ModelImage | None
    frontal_path: Path
    lateral_path: Path | None
    text: ClinicalText
    selection: ViewSelection


def build_cxr_inputs(paths: Sequence[Path], *, classified: Mapping[str, str] | None = None,
                     max_side: int | None = None) -> CxrInputs:
    """Read the headers of ``paths``, choose the views, convert them and gather the clinical text.

    Unreadable files and files without Pixel Data are skipped with a reason, like the non-images of
    :func:`select_views`. The clinical text comes from the frontal image's header.

    Raises:
        NoFrontalView: no frontal image; the message lists every file's reason.
        converters.pixels.PixelConversionError: a chosen image cannot be converted.
    """
    if not paths:
        raise ValueError("build_cxr_inputs needs at least one file")
    early: dict[str, str] = {}
    headers: list[tuple[Path, Dataset]] = []
    for path in map(Path, paths):
        try:
            ds, has_pixels = read_header(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("skipping %s: not readable as DICOM (%s)", path, exc)
            early[f"skipped:{path}"] = f"not readable as DICOM: {exc}"
            continue
        if not has_pixels:
            early[_key(ds, path, early)] = skip_reason(ds) or "not an image (no Pixel Data)"
            continue
        headers.append((path, ds))
    selection = select_views(headers, classified)
    selection = ViewSelection(selection.frontal, selection.lateral, {**early, **selection.reasons},
                              selection.frontal_projection)
    if selection.frontal is None:
        seen = "; ".join(f"{key}: {why}" for key, why in selection.reasons.items())
        raise NoFrontalView(f"no frontal chest image among {len(paths)} file(s): {seen}", selection)

    frontal_ds = pydicom.dcmread(selection.frontal)
    frontal = to_model_image(frontal_ds, max_side=max_side)
    lateral = None
    if selection.lateral is not None:
        lateral = to_model_image(pydicom.dcmread(selection.lateral), max_side=max_side)
    return CxrInputs(
        frontal=frontal,
        lateral=lateral,
        frontal_path=selection.frontal,
        lateral_path=selection.lateral,
        text=clinical_text(frontal_ds, views=views_phrase(selection)),
        selection=selection,
    )


# --- small text helpers --------------------------------------------------------------------------------------------


def _values(value: Any) -> list[Any]:
    """A DICOM value as a list (multi-valued, single or absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _joined(value: Any) -> str:
    return " ".join(str(v) for v in _values(value))


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text or None


def _first_text(*values: Any) -> str | None:
    for value in values:
        text = _clean(_joined(value))
        if text:
            return text
    return None


def _words(value: Any) -> list[str]:
    """Upper-case words of a text value, split at hyphens and also joined across them.

    "POSTERO-ANTERIOR" gives POSTERO, ANTERIOR and POSTEROANTERIOR; "PA-LAT" gives PA, LAT (and PALAT).
    """
    text = _joined(value).upper()
    words = re.findall(r"[A-Z0-9]+", text)
    joined = re.findall(r"[A-Z0-9]+", re.sub(r"(?<=[A-Z])-(?=[A-Z])", "", text))
    return words + [word for word in joined if word not in words]
