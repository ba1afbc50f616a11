"""The text of a Structured Report (Basic Text, Enhanced, Comprehensive, Comprehensive 3D SR) as plain report text.

Used for the prior report sent to CXRReportGen. The content tree is walked in document order; every TEXT item
gives one line. A TEXT item directly under a section CONTAINER other than the document root (e.g. "Findings",
"Impression") is grouped under that section's heading: ``Findings: <text> <text>``. Concept names of the TEXT
items themselves ("Finding", "Impression") are not repeated when they equal the section heading. CODE items
under a section are not text the radiologist wrote and are left out, as are coordinates, references and
everything said about the report rather than in it (HAS OBS CONTEXT, HAS CONCEPT MOD, HAS ACQ CONTEXT: observer,
tracking identifiers, algorithm name and version).
TID 1500's structural containers ("Imaging Measurements", "Measurement Group") are not headings, and a sentence
repeated in one section (one TID 1410 group per box of the same finding) is written once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pydicom

__all__ = ["SR_STORAGE_CLASSES", "is_text_sr", "report_text"]

#: The SR storage classes that carry a narrative report.
SR_STORAGE_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
})


def is_text_sr(ds: pydicom.Dataset) -> bool:
    """True for an SR of one of :data:`SR_STORAGE_CLASSES`."""
    return str(ds.get("SOPClassUID", "")) in SR_STORAGE_CLASSES


_CONTEXT = frozenset({"HAS OBS CONTEXT", "HAS CONCEPT MOD", "HAS ACQ CONTEXT"})
_STRUCTURAL = frozenset({"imaging measurements", "measurement group", "derived imaging measurements",
                         "qualitative evaluations"})


def _meaning(item: pydicom.Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return ""
    return str(seq[0].get("CodeMeaning", "") or "").strip()


def _sections(items, heading: str) -> Iterator[tuple[str, str]]:
    """(heading, text) of every TEXT item below ``items``, in document order."""
    for item in items or []:
        value_type = str(item.get("ValueType", ""))
        if str(item.get("RelationshipType", "CONTAINS")) in _CONTEXT:
            continue  # observer, tracking identifier, algorithm name/version: about the report, not the report
        if value_type == "TEXT":
            text = re.sub(r"\s+", " ", str(item.get("TextValue", "") or "")).strip()
            if text:
                yield heading, text
        if "ContentSequence" in item:
            sub = _meaning(item) if value_type == "CONTAINER" else heading
            if sub.lower() in _STRUCTURAL:
                sub = heading
            yield from _sections(item.ContentSequence, sub or heading)


def report_text(ds: pydicom.Dataset) -> str:
    """The narrative text of an SR, one ``Heading: text text`` line per section; "" when it holds no TEXT."""
    lines: list[tuple[str, list[str]]] = []
    title = _meaning(ds)
    for heading, text in _sections(ds.get("ContentSequence"), ""):
        heading = "" if heading == title else heading
        if lines and lines[-1][0] == heading:
            if text not in lines[-1][1]:
                lines[-1][1].append(text)
        else:
            lines.append((heading, [text]))
    out = []
    for heading, texts in lines:
        body = " ".join(texts)
        out.append(f"{heading}: {body}" if heading else body)
    return "\n".join(out)
