"""Small readers of DICOM text values: as a list, joined, whitespace-cleaned, the first non-empty, upper-case words."""

from __future__ import annotations

import re
from typing import Any

import pydicom

__all__ = ["clean_text", "dicom_values", "first_text", "joined_text", "text_words"]


def dicom_values(value: Any) -> list[Any]:
    """A DICOM value as a list (multi-valued, single or absent)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def joined_text(value: Any) -> str:
    """The values of a DICOM value joined by single spaces ("" when absent)."""
    return " ".join(str(v) for v in dicom_values(value))


def clean_text(text: str | None) -> str | None:
    """``text`` with runs of whitespace made single spaces and the ends stripped; None when nothing is left."""
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text or None


def first_text(*values: Any) -> str | None:
    """The first of ``values`` with non-blank text, cleaned (:func:`clean_text`), or None."""
    for value in values:
        text = clean_text(joined_text(value))
        if text:
            return text
    return None


def text_words(value: Any) -> list[str]:
    """Upper-case words of a text value, split at hyphens and also joined across them.

    "POSTERO-ANTERIOR" gives POSTERO, ANTERIOR and POSTEROANTERIOR; "PA-LAT" gives PA, LAT (and PALAT).
    """
    text = joined_text(value).upper()
    words = re.findall(r"[A-Z0-9]+", text)
    joined = re.findall(r"[A-Z0-9]+", re.sub(r"(?<=[A-Z])-(?=[A-Z])", "", text))
    return words + [word for word in joined if word not in words]
