"""The emulated Azure DICOM service's storage: instances on disk, their headers, and the change feed."""

from __future__ import annotations

import datetime as dt
import io
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

# FailureReason values of Microsoft's conformance statement (v2)
GENERAL_FAILURE = 272
VALIDATION_FAILED = 43264
STUDY_UID_MISMATCH = 43265
ALREADY_STORED = 45070
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID")
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


@dataclass
class Stored:
    study: str
    series: str
    sop: str
    path: Path
    header: Dataset


@dataclass
class StowResult:
    """Per-instance outcome of one STOW-RS request: (SOP class, SOP instance) stored, and failures with reasons."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def metadata_json(header: Dataset) -> dict[str, Any]:
    """DICOM JSON of a header without bulk data (the change feed's ``Metadata``, QIDO answers)."""
    try:
        return header.to_json_dict(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda _el: "")
    except Exception:  # noqa: BLE001 - a header pydicom cannot render still has its UIDs
        return {k: v for k, v in ((f"{int(el.tag):08X}", {"vr": el.VR, "Value": [str(el.value)]})
                                  for el in header if el.keyword in REQUIRED)}


class Archive:
    """Thread-safe store of the emulator: instances by SOP Instance UID and the change feed in order."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.instances: dict[str, Stored] = {}
        self.feed: list[dict[str, Any]] = []
        self.stow_requests = 0
        #: how many times each SOP Instance UID arrived in a STOW-RS request (stored or answered 45070)
        self.stow_counts: Counter[str] = Counter()
        #: how many times each SOP Instance UID was retrieved by WADO-RS
        self.wado_counts: Counter[str] = Counter()

    def store(self, parts: list[bytes], study_in_path: str | None = None) -> StowResult:
        """Store the parts of one STOW-RS request; per-instance validation as the conformance statement says."""
        result = StowResult()
        with self._lock:
            self.stow_requests += 1
        for data in parts:
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
            except Exception:  # noqa: BLE001 - not DICOM: a failed instance without UIDs
                result.failed.append(("", "", VALIDATION_FAILED))
                continue
            sop_class = str(ds.get("SOPClassUID", ""))
            sop = str(ds.get("SOPInstanceUID", ""))
            if any(not str(ds.get(k, "")).strip() for k in REQUIRED) or \
                    str(ds.file_meta.get("TransferSyntaxUID", "")) == IMPLICIT_VR_LE:
                result.failed.append((sop_class, sop, VALIDATION_FAILED))
                continue
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            if study_in_path and study_in_path != study:
                result.failed.append((sop_class, sop, STUDY_UID_MISMATCH))
                continue
            with self._lock:
                self.stow_counts[sop] += 1
                held = self.instances.get(sop)
                if held is not None:
                    result.failed.append((sop_class, sop, ALREADY_STORED))
                    continue
                path = self.dir / f"{sop}.dcm"
                path.write_bytes(data)
                header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                self.instances[sop] = Stored(study, series, sop, path, header)
                self._log("create", study, series, sop, header)
            result.stored.append((sop_class, sop))
        return result

    def _log(self, action: str, study: str, series: str, sop: str, header: Dataset | None) -> None:
        if action == "delete":
            for entry in self.feed:
                if entry["SopInstanceUid"] == sop:
                    entry["State"] = "deleted"
                    entry["Metadata"] = None
        self.feed.append({"Sequence": len(self.feed) + 1, "StudyInstanceUid": study, "SeriesInstanceUid": series,
                          "SopInstanceUid": sop, "Action": action, "Timestamp": _timestamp(),
                          "State": "deleted" if action == "delete" else "current",
                          "Metadata": metadata_json(header) if header is not None else None})

    def delete(self, study: str, series: str | None = None, sop: str | None = None) -> int:
        """Delete a study, series or instance; each deleted instance gets a ``delete`` entry in the feed."""
        with self._lock:
            gone = [s for s in self.instances.values() if s.study == study and series in (None, s.series)
                    and sop in (None, s.sop)]
            for s in gone:
                del self.instances[s.sop]
                s.path.unlink(missing_ok=True)
                self._log("delete", s.study, s.series, s.sop, None)
        return len(gone)

    def changefeed(self, start: str | None, end: str | None, offset: int, limit: int,
                   metadata: bool) -> list[dict[str, Any]]:
        """v2: the entries with ``start <= Timestamp < end``, skipping ``offset`` of them, at most ``limit``."""
        with self._lock:
            window = [e for e in self.feed if (start is None or _ts(e["Timestamp"]) >= _ts(start))
                      and (end is None or _ts(e["Timestamp"]) < _ts(end))]
            page = [dict(e) for e in window[offset:offset + limit]]
        if not metadata:
            for e in page:
                e.pop("Metadata", None)
        return page

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self.feed[-1]) if self.feed else None

    def find(self, study: str | None = None, series: str | None = None, sop: str | None = None) -> list[Stored]:
        with self._lock:
            return [s for s in self.instances.values() if study in (None, s.study) and series in (None, s.series)
                    and sop in (None, s.sop)]


def _ts(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
