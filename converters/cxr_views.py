"""View classification of one chest radiograph header: frontal (PA/AP), lateral or other.

Rules (:func:`classify_view`), first rule that decides wins
-----------------------------------------------------------
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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.sr import Collection
from pydicom.sr.coding import Code

from converters.header_text import dicom_values, text_words

__all__ = ["Projection", "View", "ViewKind", "classify_view", "view_of"]

ViewKind = Literal["frontal", "lateral", "other"]
Projection = Literal["PA", "AP"]

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
class View:
    """The view of one image: its kind, PA/AP when known, a short human reason, and whether only the zero-shot
    label decided it."""

    kind: ViewKind
    projection: Projection | None
    reason: str
    from_classifier: bool = False


def classify_view(ds: Dataset, classified: str | None = None) -> tuple[ViewKind, str]:
    """The view of one image and a short human reason, e.g. ``("frontal", "ViewPosition=PA")``.

    ``classified`` is the zero-shot label for this image, used only when the header decides nothing. The order of
    the rules is in the module docstring.
    """
    view = view_of(ds, classified)
    return view.kind, view.reason


def view_of(ds: Dataset, classified: str | None) -> View:
    """The :class:`View` of ``ds`` by the rules in the module docstring (``classified``: its zero-shot label)."""
    for rule in (_by_view_position, _by_view_code, _by_patient_orientation, _by_description):
        view = rule(ds)
        if view is not None:
            return view
    if classified and classified.strip():
        found = _words_view(text_words(classified), allow_other=True)
        label = classified.strip()
        if found is not None and found[0] != "other":
            return View(found[0], found[1], f"zero-shot label {label!r}", from_classifier=True)
        return View("other", None, f"zero-shot label {label!r} is not a frontal or lateral view",
                    from_classifier=True)
    return View("other", None, "no view in ViewPosition, ViewCodeSequence, PatientOrientation or descriptions, "
                               "and no zero-shot label")


def _by_view_position(ds: Dataset) -> View | None:
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value in _VIEW_POSITIONS:
        kind, projection = _VIEW_POSITIONS[value]
        return View(kind, projection, f"ViewPosition={value}")
    if value in _OTHER_VIEW_POSITIONS:
        return View("other", None, f"ViewPosition={value} (decubitus or oblique)")
    return None


def _by_view_code(ds: Dataset) -> View | None:
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
                return View("other", None, f"{described} (a DX view that is neither frontal nor lateral)")
    if found is None:
        found = _words_view(text_words(meaning), allow_other=True)
    if found is None:
        return None
    return View(found[0], found[1], described)


def _by_patient_orientation(ds: Dataset) -> View | None:
    values = [str(v).strip().upper() for v in dicom_values(ds.get("PatientOrientation"))]
    if len(values) != 2 or not all(values) or not all(set(v) <= set("APRLHF") for v in values):
        return None
    axes = {values[0][0], values[1][0]}  # dominant letter of each axis
    shown = "\\".join(values)
    if axes & set("HF") and axes & set("LR"):
        return View("frontal", None, f"PatientOrientation={shown} (coronal: frontal)")
    if axes & set("HF") and axes & set("AP"):
        return View("lateral", None, f"PatientOrientation={shown} (sagittal: lateral)")
    return None


def _by_description(ds: Dataset) -> View | None:
    for keyword in _IMAGE_TEXT_KEYWORDS + _STUDY_TEXT_KEYWORDS:
        words = text_words(ds.get(keyword))
        found = _words_view(words, allow_other=keyword in _IMAGE_TEXT_KEYWORDS)
        if found is None:
            continue
        kind, projection = found
        matched = sorted(set(words) & (_PA_WORDS | _AP_WORDS | _FRONTAL_WORDS | _LATERAL_WORDS | _OTHER_VIEW_WORDS))
        return View(kind, projection, f"{keyword} mentions {', '.join(matched)}")
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
