"""UPS workitems for the AIW-I tests: what a worklist manager (a RIS, an AI orchestrator) schedules for the node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import httpx
import pydicom
from pydicom.dataset import Dataset

TASK_CODE, TASK_SCHEME = "CXR-REPORT", "99AIWI"


def workitem(uid: str, files: Sequence[Path], retrieve_base: str | None, *, code: str = TASK_CODE,
             scheme: str = TASK_SCHEME, station: str = "AINODE") -> Dataset:
    """A SCHEDULED workitem asking for ``code`` on the instances of ``files`` (one Input Information item per series;
    their WADO-RS Retrieve URL under ``retrieve_base`` when given)."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ds = Dataset()
    ds.SOPInstanceUID = uid
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "AI chest X-ray report"
    ds.WorklistLabel = "AI"
    ds.ScheduledProcedureStepStartDateTime = "20240610101500"
    ds.InputReadinessState = "READY"
    ds.PatientName = str(headers[0].PatientName)
    ds.PatientID = str(headers[0].PatientID)
    ds.StudyInstanceUID = str(headers[0].StudyInstanceUID)
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = code, scheme, "AI chest X-ray report"
    ds.ScheduledWorkitemCodeSequence = [c]
    st = Dataset()
    st.CodeValue, st.CodingSchemeDesignator, st.CodeMeaning = station, "99AIWI", station
    ds.ScheduledStationNameCodeSequence = [st]
    items: dict[str, Dataset] = {}
    for h in headers:
        item = items.get(str(h.SeriesInstanceUID))
        if item is None:
            item = items[str(h.SeriesInstanceUID)] = Dataset()
            item.TypeOfInstances = "DICOM"
            item.StudyInstanceUID = str(h.StudyInstanceUID)
            item.SeriesInstanceUID = str(h.SeriesInstanceUID)
            item.ReferencedSOPSequence = []
            if retrieve_base:
                w = Dataset()
                w.RetrieveURL = f"{retrieve_base}/studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}"
                item.WADORSRetrievalSequence = [w]
        ref = Dataset()
        ref.ReferencedSOPClassUID = str(h.SOPClassUID)
        ref.ReferencedSOPInstanceUID = str(h.SOPInstanceUID)
        item.ReferencedSOPSequence.append(ref)
    ds.InputInformationSequence = list(items.values())
    return ds


def create(url: str, ds: Dataset) -> httpx.Response:
    """POST the workitem to the worklist (Create Workitem)."""
    return httpx.post(f"{url}/workitems?{ds.SOPInstanceUID}", content=json.dumps(ds.to_json_dict()),
                      headers={"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"},
                      trust_env=False, timeout=30)
