"""A modality (and a PACS) telling the node about a study, with pynetdicom as SCU: MPPS N-CREATE / N-SET and the IAN.

Each call opens one association, sends one message and returns the DIMSE status the node answered::

    refs = instance_refs(files)                                   # (SOP class, SOP instance, series) per file
    assert mpps_create(port, mpps_uid, study_uid) == 0x0000       # IN PROGRESS
    assert mpps_set(port, mpps_uid, "COMPLETED", refs) == 0x0000  # Performed Series Sequence > Referenced Images
    assert ian(port, study_uid, refs) == 0x0000                   # Instance Availability Notification (N-CREATE)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from .ports import HOST

MPPS = "1.2.840.10008.3.1.2.3.3"
IAN = "1.2.840.10008.5.1.4.33"
Refs = Sequence[tuple[str, str, str]]  # (SOP Class UID, SOP Instance UID, Series Instance UID)


def instance_refs(files: Sequence[Path]) -> list[tuple[str, str, str]]:
    """(SOP Class UID, SOP Instance UID, Series Instance UID) of each file."""
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)))
    return out


def _associate(port: int, sop_class: str, calling_ae: str, called_ae: str):
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(sop_class)
    assoc = ae.associate(HOST, port, ae_title=called_ae)
    assert assoc.is_established, f"the node did not accept an association for {sop_class}"
    return assoc


def performed_series(refs: Refs) -> list[Dataset]:
    """Performed Series Sequence items: one per series, its images in Referenced Image Sequence."""
    by_series: dict[str, list[Dataset]] = {}
    for sop_class, sop, series in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        by_series.setdefault(series, []).append(item)
    out = []
    for series, images in by_series.items():
        s = Dataset()
        s.SeriesInstanceUID = series
        s.ProtocolName = "CHEST"
        s.RetrieveAETitle = ""
        s.SeriesDescription = ""
        s.PerformingPhysicianName = ""
        s.OperatorsName = ""
        s.ReferencedImageSequence = images
        s.ReferencedNonImageCompositeSOPInstanceSequence = []
        out.append(s)
    return out


def mpps_create(port: int, uid: str, study_uid: str, *, calling_ae: str = "MODALITY", called_ae: str = "AINODE",
                status: str = "IN PROGRESS", pass_uid: bool = True) -> int:
    """N-CREATE an MPPS (IN PROGRESS) for ``study_uid``; the status the node answered."""
    ds = Dataset()
    ssa = Dataset()
    ssa.StudyInstanceUID = study_uid
    ssa.AccessionNumber = "ACC-EMULATED"
    ssa.RequestedProcedureID = "RP1"
    ssa.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [ssa]
    ds.PatientName = "DEMO^PATIENT"
    ds.PatientID = "DEMO-0001"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = calling_ae
    ds.PerformedProcedureStepStartDate = "20240610"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "CR"
    ds.PerformedSeriesSequence = []
    assoc = _associate(port, MPPS, calling_ae, called_ae)
    try:
        rsp, _ = assoc.send_n_create(ds, MPPS, uid if pass_uid else None)
    finally:
        assoc.release()
    return int(rsp.Status) if rsp is not None and "Status" in rsp else -1


def mpps_set(port: int, uid: str, status: str, refs: Refs, *, calling_ae: str = "MODALITY",
             called_ae: str = "AINODE") -> int:
    """N-SET the MPPS to ``status`` with its Performed Series Sequence listing ``refs``."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240610"
    ds.PerformedProcedureStepEndTime = "101800"
    ds.PerformedSeriesSequence = performed_series(refs)
    assoc = _associate(port, MPPS, calling_ae, called_ae)
    try:
        rsp, _ = assoc.send_n_set(ds, MPPS, uid)
    finally:
        assoc.release()
    return int(rsp.Status) if rsp is not None and "Status" in rsp else -1


def ian(port: int, study_uid: str, refs: Refs, *, uid: str | None = None, calling_ae: str = "PACS",
        called_ae: str = "AINODE", unavailable: Sequence[str] = ()) -> int:
    """N-CREATE an Instance Availability Notification for ``study_uid`` listing ``refs`` (ONLINE)."""
    ds = Dataset()
    ds.StudyInstanceUID = study_uid
    ds.ReferencedPerformedProcedureStepSequence = []
    series_items: dict[str, Dataset] = {}
    for sop_class, sop, series in refs:
        s = series_items.get(series)
        if s is None:
            s = series_items[series] = Dataset()
            s.SeriesInstanceUID = series
            s.ReferencedSOPSequence = []
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop
        item.InstanceAvailability = "UNAVAILABLE" if sop in unavailable else "ONLINE"
        item.RetrieveAETitle = calling_ae
        s.ReferencedSOPSequence.append(item)
    ds.ReferencedSeriesSequence = list(series_items.values())
    assoc = _associate(port, IAN, calling_ae, called_ae)
    try:
        rsp, _ = assoc.send_n_create(ds, IAN, uid or generate_uid())
    finally:
        assoc.release()
    return int(rsp.Status) if rsp is not None and "Status" in rsp else -1
