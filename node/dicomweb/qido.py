"""QIDO-RS: a C-FIND identifier (study root) asked of a DICOMweb service (PS3.18 10.6).

The identifier's level picks the resource (``/studies``, ``/studies/{uid}/series``,
``/studies/{uid}/series/{uid}/instances``); its single-valued non-empty keys become matching parameters and its
empty or multi-valued keys ``includefield`` (a multi-valued key such as ModalitiesInStudy is checked by the caller
on the answers: services differ in how they match lists). Answers (DICOM JSON) come back as pydicom Datasets.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydicom.dataset import Dataset

from node.dicom.qr import Deadline, QueryError, QueryTimeout, text_of

_PATH_KEYS = {"STUDY": (), "SERIES": ("StudyInstanceUID",), "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID")}


def qido_request(query: Dataset) -> tuple[str, list[tuple[str, str]]]:
    """(path below the base URL, query parameters) of a study-root C-FIND identifier."""
    level = text_of(query, "QueryRetrieveLevel").upper() or "STUDY"
    if level not in _PATH_KEYS:
        raise QueryError(f"QIDO-RS has no {level} level")
    path_uids = [text_of(query, k) for k in _PATH_KEYS[level]]
    if not all(path_uids):
        raise QueryError(f"a {level} query needs {', '.join(_PATH_KEYS[level])}")
    path = "".join(f"/{seg}/{uid}" for seg, uid in zip(("studies", "series"), path_uids))
    path += {"STUDY": "/studies", "SERIES": "/series", "IMAGE": "/instances"}[level]
    params: list[tuple[str, str]] = []
    include: list[str] = []
    for elem in query:
        kw = elem.keyword
        if not kw or kw in ("QueryRetrieveLevel", "SpecificCharacterSet") or kw in _PATH_KEYS[level]:
            continue
        value = elem.value
        multi = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
        if value in (None, "") or multi:
            include.append(kw)
        else:
            params.append((kw, str(value)))
    if include:
        params.append(("includefield", ",".join(include)))
    return path, params


def qido_find(http: httpx.Client, base: str, query: Dataset, deadline: Deadline, peer: str) -> list[Dataset]:
    """The matches of one QIDO-RS search; :class:`QueryError` (no PHI in the message) or :class:`QueryTimeout`."""
    path, params = qido_request(query)
    level = text_of(query, "QueryRetrieveLevel") or "STUDY"
    try:
        rsp = http.get(base + path, params=params, headers={"Accept": "application/dicom+json"},
                       timeout=deadline.left())
    except httpx.TimeoutException:
        raise QueryTimeout() from None
    except httpx.HTTPError as exc:
        deadline.left()
        raise QueryError(f"cannot reach the DICOMweb service {peer}: {type(exc).__name__}") from None
    if rsp.status_code == 204:
        return []
    if rsp.status_code != 200:
        raise QueryError(f"the DICOMweb service {peer} answered a {level} QIDO-RS with HTTP {rsp.status_code}")
    try:
        items: Any = rsp.json()
        return [Dataset.from_json(item) for item in items]
    except (ValueError, TypeError, KeyError) as exc:
        raise QueryError(f"the DICOMweb service {peer} sent an unreadable {level} QIDO-RS answer: "
                         f"{type(exc).__name__}") from None
