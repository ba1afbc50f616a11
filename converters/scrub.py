"""Minimal egress: what leaves the hospital for a model carries no more identity than it must.

* :func:`scrub_text` removes, from free text sent to a model (indication, comparison, prior report...), the
  names, identifiers and dates that the study's own header holds: patient name (each component), other patient
  names, physicians' and operators' names, PatientID, OtherPatientIDs, AccessionNumber, StudyID, and the birth,
  study, series, acquisition and content dates in the usual written forms (20240131, 2024-01-31, 31/01/2024,
  01/31/2024, 31.01.2024). It does not try to find identity the header does not know about.
* :func:`scrub_request_text` applies it to the text columns of a model request (``input_data.data``).
* :func:`without_burned_in`: images marked BurnedInAnnotation=YES are not sent unless the rule allows it
  (``params.allow_burned_in: true``); the worker leaves them out of every job before any model runs, and a job
  left with nothing is skipped with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom

NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                 "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
                 "OperatorsName", "RequestingPhysician", "ScheduledPerformingPhysicianName")
ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "AdmissionID",
               "RequestedProcedureID", "PerformedProcedureStepID")
DATE_KEYWORDS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")

NAME_MARK, ID_MARK, DATE_MARK = "[name]", "[id]", "[date]"
MIN_NAME_PART = 2  # single letters (initials) are left: replacing every "A" would destroy the text

CXR_TEXT_COLUMNS = ("indication", "technique", "comparison", "prior_report")


def _values(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value if str(v).strip()]
    return [str(value)] if str(value).strip() else []


def _name_parts(value: Any) -> list[str]:
    parts: list[str] = []
    for name in _values(value):
        # PN: family^given^middle^prefix^suffix, with = between alphabetic/ideographic/phonetic groups
        for part in re.split(r"[\^=]", name):
            for word in re.split(r"[\s,]+", part):
                word = word.strip(" .")
                if len(word) >= MIN_NAME_PART:
                    parts.append(word)
    return parts


def _date_forms(value: str) -> list[str]:
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", value.strip())
    if not m:
        return []  # a partial date (a year alone) would scrub too much
    y, mo, d = m.groups()
    forms = {f"{y}{mo}{d}", f"{y}-{mo}-{d}", f"{y}/{mo}/{d}", f"{y}.{mo}.{d}",
             f"{d}/{mo}/{y}", f"{mo}/{d}/{y}", f"{d}.{mo}.{y}", f"{d}-{mo}-{y}", f"{mo}-{d}-{y}"}
    # without leading zeros too (1/3/2024)
    forms |= {f"{int(d)}/{int(mo)}/{y}", f"{int(mo)}/{int(d)}/{y}", f"{int(d)}.{int(mo)}.{y}"}
    return sorted(forms, key=len, reverse=True)


def identifiers(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    """(value, replacement) pairs the header holds, longest first (so a full ID goes before a part of it)."""
    pairs: dict[str, str] = {}
    for keyword in DATE_KEYWORDS:
        for value in _values(ds.get(keyword)):
            for form in _date_forms(value):
                pairs.setdefault(form, DATE_MARK)
    for keyword in ID_KEYWORDS:
        for value in _values(ds.get(keyword)):
            pairs.setdefault(value.strip(), ID_MARK)
    for keyword in NAME_KEYWORDS:
        for part in _name_parts(ds.get(keyword)):
            pairs.setdefault(part, NAME_MARK)
    return sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True)


def _pattern(value: str) -> re.Pattern[str]:
    # Whole tokens only: a PatientID "12" must not eat the "12" of "T12 vertebra"; case-insensitive for names.
    return re.compile(r"(?<![0-9A-Za-z])" + re.escape(value) + r"(?![0-9A-Za-z])", re.IGNORECASE)


def scrub_text(text: str | None, headers: pydicom.Dataset | Iterable[pydicom.Dataset]) -> str | None:
    """``text`` with the header's own names, IDs and dates replaced by ``[name]``, ``[id]``, ``[date]``."""
    if text is None or not text.strip():
        return text
    datasets = [headers] if isinstance(headers, pydicom.Dataset) else list(headers)
    pairs: dict[str, str] = {}
    for ds in datasets:
        for value, mark in identifiers(ds):
            pairs.setdefault(value, mark)
    for value, mark in sorted(pairs.items(), key=lambda kv: len(kv[0]), reverse=True):
        text = _pattern(value).sub(mark, text)
    return text


def names_and_ids(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The name and ID attributes of ``ds`` only: a prior study's identity, without its dates (the prior's date
    is what the model needs to compare; it is not the current study's)."""
    out = pydicom.Dataset()
    for keyword in (*NAME_KEYWORDS, *ID_KEYWORDS):
        if keyword in ds:
            setattr(out, keyword, ds.get(keyword))
    return out


def scrub_request_text(payload: dict, headers: pydicom.Dataset | Iterable[pydicom.Dataset],
                       columns: Sequence[str] = CXR_TEXT_COLUMNS) -> dict:
    """The request with every text column among ``columns`` scrubbed (images are left as they are)."""
    datasets = [headers] if isinstance(headers, pydicom.Dataset) else list(headers)
    input_data = payload.get("input_data") or {}
    names = list(input_data.get("columns") or [])
    rows = []
    for row in input_data.get("data") or []:
        rows.append([scrub_text(v, datasets) if n in columns and isinstance(v, str) else v
                     for n, v in zip(names, row)])
    return {**payload, "input_data": {**input_data, "data": rows}}


def without_burned_in(paths: Sequence[Path], params: dict[str, Any]) -> tuple[list[Path], str | None]:
    """The files that may be sent, and a note on those left out (BurnedInAnnotation=YES, rule not allowing it).

    Per image, not per job: a burned-in dose screen or screen capture in a matched series is left out and the
    rest of the series goes on (a volume missing a slice is then refused by the volume checks, never sent
    partly). Unreadable files are kept: the pipeline reports them.
    """
    paths = list(paths)
    if params.get("allow_burned_in") is True:
        return paths, None
    keep, marked = [], []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["BurnedInAnnotation", "SOPInstanceUID"])
        except Exception:  # noqa: BLE001 - broken files are the pipeline's to report
            keep.append(path)
            continue
        if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
            marked.append(str(ds.get("SOPInstanceUID", "?")))
        else:
            keep.append(path)
    if not marked:
        return keep, None
    return keep, (f"left out {len(marked)} image(s) marked BurnedInAnnotation=YES ({', '.join(marked)}); "
                  "set allow_burned_in: true in the rule's params to send them")
