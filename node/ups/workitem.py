"""Reading a UPS workitem's task and inputs, and writing what the performer reports (PS3.4 CC.2.5, Table CC.2.5-3).

Inputs: Input Information Sequence (0040,4021), each item the Referenced Instances and Access Macro (PS3.3 Table
10-3b): Study/Series Instance UID, Referenced SOP Sequence, and where to get them: WADO-RS Retrieval Sequence >
Retrieve URL, or DICOM Retrieval Sequence > Retrieve AE Title. Outputs go the same way into Unified Procedure Step
Performed Procedure Sequence (0074,1216) > Output Information Sequence (0040,4033), with the performed step's
start and end, station and workitem code: what the final state COMPLETED requires. A cancellation carries
Procedure Step Progress Information Sequence (0074,1002) > Procedure Step Cancellation DateTime and Reason For
Cancellation, what the final state CANCELED requires.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

from pydicom.dataset import Dataset

#: Coding scheme of the node's own station code (private schemes start with 99, PS3.16 8.2)
STATION_SCHEME = "99DICOMAINODE"


@dataclass(frozen=True)
class InputRef:
    """One input instance of a workitem and where it can be retrieved."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    retrieve_url: str | None
    retrieve_ae: str | None


@dataclass(frozen=True)
class OutputRef:
    """One result to report: its UIDs and where it went (DICOMweb URLs and AE titles)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    retrieve_urls: tuple[str, ...] = ()
    retrieve_aes: tuple[str, ...] = ()


def dt(t: float | None = None) -> str:
    """A DICOM DT value (local time, seconds) of ``t`` (now when None)."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() if t is None else t))


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def workitem_codes(ds: Dataset) -> list[tuple[str, str]]:
    """(CodeValue, CodingSchemeDesignator) of each Scheduled Workitem Code Sequence item."""
    return [(_text(i, "CodeValue"), _text(i, "CodingSchemeDesignator"))
            for i in ds.get("ScheduledWorkitemCodeSequence", [])]


def inputs_of(ds: Dataset) -> list[InputRef]:
    """Every input instance the workitem names, in order."""
    out = []
    for item in ds.get("InputInformationSequence", []):
        urls = [_text(r, "RetrieveURL") for r in item.get("WADORSRetrievalSequence", []) if _text(r, "RetrieveURL")]
        aes = [_text(r, "RetrieveAETitle") for r in item.get("DICOMRetrievalSequence", [])
               if _text(r, "RetrieveAETitle")]
        for ref in item.get("ReferencedSOPSequence", []):
            out.append(InputRef(_text(item, "StudyInstanceUID"), _text(item, "SeriesInstanceUID"),
                                _text(ref, "ReferencedSOPInstanceUID"), _text(ref, "ReferencedSOPClassUID"),
                                urls[0] if urls else None, aes[0].split("\\")[0] if aes else None))
    return out


def wado_base(input_ref: InputRef, fallback: str) -> str:
    """The DICOMweb base URL an input is fetched from: its Retrieve URL without the ``/studies/...`` resource path,
    or ``fallback``."""
    url = input_ref.retrieve_url
    if url and "/studies/" in url:
        return url.split("/studies/", 1)[0].rstrip("/")
    return (url or fallback).rstrip("/")


def progress(percent: int, description: str, *, reason: str | None = None) -> Dataset:
    """Procedure Step Progress Information Sequence: progress, a description, and for a cancellation its date,
    time and reason."""
    item = Dataset()
    item.ProcedureStepProgress = percent
    item.ProcedureStepProgressDescription = description[:64]
    if reason is not None:
        item.ProcedureStepCancellationDateTime = dt()
        item.ReasonForCancellation = reason[:10240]
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = [item]
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning[:64]
    return c


def output_items(outputs: Iterable[OutputRef]) -> list[Dataset]:
    """Output Information Sequence items, one per series, with where the results can be retrieved."""
    by_series: dict[tuple[str, str], list[OutputRef]] = {}
    for o in outputs:
        by_series.setdefault((o.study_uid, o.series_uid), []).append(o)
    items = []
    for (study, series), refs in by_series.items():
        item = Dataset()
        item.TypeOfInstances = "DICOM"
        item.StudyInstanceUID = study
        item.SeriesInstanceUID = series
        sops = []
        for r in refs:
            s = Dataset()
            s.ReferencedSOPClassUID = r.sop_class_uid
            s.ReferencedSOPInstanceUID = r.sop_instance_uid
            sops.append(s)
        item.ReferencedSOPSequence = sops
        urls = sorted({u for r in refs for u in r.retrieve_urls})
        aes = sorted({a for r in refs for a in r.retrieve_aes})
        if urls:
            wado = []
            for url in urls:
                w = Dataset()
                w.RetrieveURL = f"{url.rstrip('/')}/studies/{study}/series/{series}"
                wado.append(w)
            item.WADORSRetrievalSequence = wado
        if aes:
            d = Dataset()
            d.RetrieveAETitle = aes
            item.DICOMRetrievalSequence = [d]
        items.append(item)
    return items


def completion(started: float, station: str, codes: Sequence[tuple[str, str]], outputs: Iterable[OutputRef],
               note: str) -> Dataset:
    """What COMPLETED requires: the performed procedure (start, end, station, workitem code, outputs) and the
    progress at 100 %."""
    step = Dataset()
    step.ActualHumanPerformersSequence = []
    step.PerformedStationNameCodeSequence = [_code(station, STATION_SCHEME, station)]
    step.PerformedProcedureStepStartDateTime = dt(started)
    step.PerformedWorkitemCodeSequence = [_code(v, s or "99LOCAL", v) for v, s in codes[:1]]
    step.PerformedProcedureStepEndDateTime = dt()
    step.OutputInformationSequence = output_items(outputs)
    ds = progress(100, note)
    ds.UnifiedProcedureStepPerformedProcedureSequence = [step]
    return ds
