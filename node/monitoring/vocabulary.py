"""What the monitoring side looks for in a report: the node's findings and the classification labels it checks.

The findings are the ones the node codes in its own SRs (:data:`dicom_out.finding_codes.FINDING_TABLE`): their
keywords, plus the synonyms radiologists write for them (:data:`SYNONYMS`), plus phrases that by themselves say a
finding is absent (:data:`NORMAL_PHRASES`, "heart size is normal"). A finding's key is a short slug of the
concept ("pleural_effusion"); an AI result is matched to it by its SNOMED/RadLex code.

Classification labels (MedImageInsight zero-shot rules) are compared where the report says them: the view of a chest
X-ray and the side of an extremity study. :data:`LABEL_TERMS` gives, per label set and canonical value, the words
that name it; ``monitoring.label_terms`` adds a site's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from dicom_out.finding_codes import FINDING_TABLE, GENERIC_FINDING


@dataclass(frozen=True)
class FindingKind:
    """One finding the node codes: its key, name, code and the words that name it in a report."""

    key: str
    name: str
    code: str  # CodeValue of the node's SR Finding
    scheme: str
    terms: tuple[str, ...]


def _slug(meaning: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", meaning.lower()).strip("_")


#: Words radiologists use beyond the table's keywords (lower case; plurals spelled out: no lemmatiser runs).
SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "pneumothorax": ("pneumothoraces", "ptx"),
    "pleural_effusion": ("pleural fluid", "effusions", "hydrothorax", "pleural effusions"),
    "cardiomegaly": ("cardiac enlargement", "enlarged cardiac silhouette", "cardiac silhouette is enlarged",
                     "heart size is enlarged", "enlargement of the cardiac silhouette", "enlarged heart size",
                     "heart is mildly enlarged", "heart is moderately enlarged", "heart is enlarged",
                     "cardiac silhouette is mildly enlarged", "heart size is mildly enlarged"),
    "pulmonary_edema": ("pulmonary edema", "pulmonary oedema", "interstitial edema", "alveolar edema"),
    "lung_consolidation": ("consolidative", "consolidated", "consolidations"),
    "atelectasis": ("atelectases", "collapse", "atelectatic changes"),
    "pneumonia": ("pneumonias", "bronchopneumonia", "infectious process", "pneumonic"),
    "pulmonary_emphysema": ("emphysematous", "emphysematous changes"),
    "nodule": ("nodules", "nodular", "nodular opacity", "nodular opacities"),
    "mass": ("masses", "mass lesion"),
    "fracture_of_bone": ("fractures", "fractured", "rib fracture", "rib fractures"),
    "opacity": ("opacities", "opacification", "infiltrate", "infiltrates", "airspace disease",
                "air space disease", "airspace opacity", "airspace opacities"),
}

#: Phrases that alone say a finding is absent ("Heart size is normal." says: no cardiomegaly).
NORMAL_PHRASES: Mapping[str, tuple[str, ...]] = {
    "cardiomegaly": ("heart size is normal", "heart size normal", "normal heart size", "heart is normal in size",
                     "heart size is within normal limits", "normal cardiac silhouette",
                     "cardiac silhouette is normal", "cardiac size is normal", "normal size of the heart",
                     "cardiac silhouette is within normal limits", "heart is not enlarged",
                     "normal cardiac size", "heart size is upper normal", "normal sized heart"),
}


def _kinds() -> tuple[FindingKind, ...]:
    out = []
    for keywords, code in FINDING_TABLE:
        key = _slug(code.meaning)
        if key == "lung_consolidation":
            name = "Consolidation"
        else:
            name = code.meaning[:1].upper() + code.meaning[1:]
        terms = tuple(dict.fromkeys([*keywords, *SYNONYMS.get(key, ())]))
        out.append(FindingKind(key=key, name=name, code=str(code.value), scheme=str(code.scheme_designator),
                               terms=terms))
    return tuple(out)


#: Every finding, in the table's order.
FINDINGS: tuple[FindingKind, ...] = _kinds()
BY_KEY: Mapping[str, FindingKind] = {f.key: f for f in FINDINGS}
BY_CODE: Mapping[str, FindingKind] = {f.code: f for f in FINDINGS}
GENERIC_CODE = str(GENERIC_FINDING.value)


def finding_of_code(code_value: str | None) -> FindingKind | None:
    """The finding an SR Finding code stands for (None for the generic code or an unknown one)."""
    if not code_value or code_value == GENERIC_CODE:
        return None
    return BY_CODE.get(code_value)


# Classification labels -------------------------------------------------------------------------------------------
#: label set -> canonical value -> words naming it in a label's own text (AI side) and, with a context word
#: (:data:`VIEW_CONTEXT`), in a report.
LABEL_TERMS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "view": {"PA": ("pa", "posteroanterior", "postero-anterior", "posterior-anterior"),
             "AP": ("ap", "anteroposterior", "antero-posterior", "anterior-posterior", "portable"),
             "LATERAL": ("lateral", "lat")},
    "laterality": {"LEFT": ("left", "lt"), "RIGHT": ("right", "rt")},
}
#: A view word counts in a report only beside one of these ("PA and lateral views", "portable AP chest"): "lateral"
#: alone is an anatomical direction ("lateral costophrenic angle"), "AP" alone may be the aortopulmonary window.
VIEW_CONTEXT_AFTER = ("view", "views", "radiograph", "radiographs", "projection", "projections", "film", "films",
                      "image", "images", "cxr", "and lateral", "/ lateral", "upright", "erect", "supine",
                      "semi-upright", "portable")
VIEW_CONTEXT_BEFORE = ("portable", "upright", "erect", "supine", "semi-upright", "single", "frontal and", "pa and",
                       "ap and", "pa /", "ap /")
#: The side counts in a report only before a body part ("RIGHT KNEE, 3 VIEWS").
SIDE_PARTS = ("knee", "hand", "wrist", "ankle", "foot", "shoulder", "elbow", "hip", "femur", "tibia", "humerus",
              "forearm", "fingers", "finger", "thumb", "toe", "toes", "heel", "clavicle", "leg", "arm", "breast",
              "chest", "lung", "hemithorax")


def label_terms(extra: Mapping[str, Mapping[str, list[str]]] | None = None) -> dict[str, dict[str, tuple[str, ...]]]:
    """The built-in :data:`LABEL_TERMS` with ``monitoring.label_terms`` added (label sets and values upper-cased)."""
    out = {ls: {v: tuple(words) for v, words in values.items()} for ls, values in LABEL_TERMS.items()}
    for label_set, values in (extra or {}).items():
        target = out.setdefault(label_set.lower(), {})
        for value, words in values.items():
            target[value.upper()] = tuple(dict.fromkeys([*target.get(value.upper(), ()),
                                                         *(w.lower() for w in words)]))
    return out


def canonical_label(label_set: str, label_text: str,
                    terms: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None) -> str | None:
    """The canonical value of an AI label's own words ("x-ray chest posteroanterior" -> "PA"), None if unknown.

    The first value whose word is a whole word of the label wins; a label naming two values is unknown.
    """
    table = (terms or LABEL_TERMS).get(label_set.lower())
    if not table:
        return None
    words = re.findall(r"[a-z]+(?:-[a-z]+)*", label_text.lower())
    found = {value for value, names in table.items() if any(n in words for n in names)}
    return found.pop() if len(found) == 1 else None
