"""The clinical text of a chest X-ray study for the report model: indication, technique, comparison.

Attributes (:func:`clinical_text`)
----------------------------------
indication: ReasonForTheRequestedProcedure (0040,1002); else the first non-empty ReasonForTheRequestedProcedure
in RequestAttributesSequence (0040,0275); else ReasonForStudy (0032,1030); else AdmittingDiagnosesDescription
(0008,1080). technique: RequestedProcedureDescription (0032,1060), else PerformedProcedureStepDescription
(0040,0254), else StudyDescription (0008,1030), followed by the views found ("PA and lateral views of the chest").
comparison: the text after a "Comparison:" label in RequestedProcedureComments (0040,1400),
ImagingServiceRequestComments (0040,2400) or StudyComments (0032,4000); DICOM has no dedicated attribute.
Empty values are None; nothing is written that the header does not say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pydicom

from converters.cxr_select import ViewSelection
from converters.header_text import clean_text, first_text, joined_text

__all__ = ["ClinicalText", "clinical_text", "views_phrase"]


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
    indication = first_text(ds.get("ReasonForTheRequestedProcedure"),
                             *(item.get("ReasonForTheRequestedProcedure")
                               for item in (ds.get("RequestAttributesSequence") or [])),
                             ds.get("ReasonForStudy"), ds.get("AdmittingDiagnosesDescription"))
    description = first_text(ds.get("RequestedProcedureDescription"), ds.get("PerformedProcedureStepDescription"),
                              ds.get("StudyDescription"))
    parts = [part.rstrip(". ") for part in (description, clean_text(views)) if part]
    technique = ". ".join(parts) + "." if parts else None
    comparison = None
    for keyword in ("RequestedProcedureComments", "ImagingServiceRequestComments", "StudyComments"):
        match = _COMPARISON.search(joined_text(ds.get(keyword)))
        if match and clean_text(match.group(1)):
            comparison = clean_text(match.group(1))
            break
    return ClinicalText(indication=indication, technique=technique, comparison=comparison)


def views_phrase(selection: ViewSelection) -> str | None:
    """ "PA and lateral views of the chest", "AP view of the chest", "Frontal view of the chest"... or None."""
    if selection.frontal is None:
        return "Lateral view of the chest" if selection.lateral else None
    frontal = selection.frontal_projection or "Frontal"
    return f"{frontal} and lateral views of the chest" if selection.lateral else f"{frontal} view of the chest"

