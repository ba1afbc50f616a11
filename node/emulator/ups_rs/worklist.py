"""The emulated worklist: UPS workitems, their state machine and their search (PS3.4 CC, PS3.18 §11, Azure v2).

State changes follow PS3.4 Table CC.1.1-2; the answers follow the Azure DICOM service v2 conformance statement:

==========================================  =====================================================================
request                                     answer
==========================================  =====================================================================
claim (IN PROGRESS) of a SCHEDULED item     200; the Transaction UID is recorded (it is never returned by GET)
claim of an IN PROGRESS item                409 (C302: already IN PROGRESS), whatever the Transaction UID
any change without a Transaction UID        400 (C301)
COMPLETED / CANCELED, wrong Transaction UID 400 (C301)
COMPLETED / CANCELED of a SCHEDULED item    409 (C310: not yet IN PROGRESS)
COMPLETED / CANCELED, final state unmet     400 (C304), see :func:`final_state_problem`
COMPLETED of a COMPLETED item, right UID    200 with ``Warning: 299 ...: The UPS is already in the requested state``
any change of a COMPLETED / CANCELED item   409 (C300: may no longer be updated)
update of a SCHEDULED item with a UID       400; of an IN PROGRESS item without the right UID: 400
update of a COMPLETED / CANCELED item       400; an update may not set Procedure Step State or Transaction UID: 400
unknown workitem                            404
==========================================  =====================================================================

Search matches the service's searchable attributes only (anything else: 400): exact match (case-insensitive;
Patient's Name by word prefix with ``fuzzymatching=true``), a range for ScheduledProcedureStepStartDateTime, and
``Sequence.Attribute`` inside sequences; ``limit`` 1..200, ``offset``; 204 when nothing matches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

STATES = ("SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED")
#: Azure DICOM service v2, Search Workitems, "Searchable Attributes"
SEARCHABLE = ("PatientName", "PatientID", "ReferencedRequestSequence.AccessionNumber",
              "ReferencedRequestSequence.RequestedProcedureID", "ScheduledProcedureStepStartDateTime",
              "ScheduledStationNameCodeSequence.CodeValue", "ScheduledStationClassCodeSequence.CodeValue",
              "ScheduledStationGeographicLocationCodeSequence.CodeValue", "ProcedureStepState", "StudyInstanceUID")
#: Returned by a search without includefield=all (the Return Key Type 1 and 2 attributes of Table CC.2.5-3 the
#: node reads, and the workitem's identity)
RETURN_KEYS = ("SOPClassUID", "SOPInstanceUID", "ScheduledProcedureStepPriority", "ProcedureStepLabel",
               "WorklistLabel", "ScheduledProcedureStepStartDateTime", "ScheduledWorkitemCodeSequence",
               "InputReadinessState", "InputInformationSequence", "PatientName", "PatientID", "StudyInstanceUID",
               "ProcedureStepState", "ScheduledStationNameCodeSequence")
#: Required (with a value) when a workitem is created (Table CC.2.5-3, N-CREATE type 1, as the service checks)
CREATE_REQUIRED = ("ScheduledProcedureStepPriority", "ProcedureStepLabel", "ScheduledProcedureStepStartDateTime",
                   "InputReadinessState")
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"


class UpsFailure(Exception):
    """An answer other than success: HTTP status, the PS3.4 status it stands for, and a message."""

    def __init__(self, http: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http = http
        self.code = code


@dataclass
class Workitem:
    ds: Dataset
    transaction_uid: str | None = None

    @property
    def state(self) -> str:
        return str(self.ds.ProcedureStepState)


def final_state_problem(ds: Dataset, state: str) -> str | None:
    """Why ``ds`` may not become ``state`` (Final State Codes of Table CC.2.5-3), or None.

    COMPLETED (P): Unified Procedure Step Performed Procedure Sequence with Performed Procedure Step Start and End
    DateTime and Output Information Sequence (present; it may hold no item). CANCELED (X): Procedure Step Progress
    Information Sequence > Procedure Step Cancellation DateTime.
    """
    if state == "COMPLETED":
        steps = list(ds.get("UnifiedProcedureStepPerformedProcedureSequence", []))
        if not steps:
            return "Unified Procedure Step Performed Procedure Sequence is missing"
        for key in ("PerformedProcedureStepStartDateTime", "PerformedProcedureStepEndDateTime"):
            if not steps[0].get(key):
                return f"{key} is missing"
        if "OutputInformationSequence" not in steps[0]:
            return "Output Information Sequence is missing"
    if state == "CANCELED":
        items = list(ds.get("ProcedureStepProgressInformationSequence", []))
        if not items or not items[0].get("ProcedureStepCancellationDateTime"):
            return "Procedure Step Cancellation DateTime is missing"
    return None


def _keyword(part: str) -> str:
    """A query key part as a keyword: ``PatientID`` or ``00100020``."""
    if len(part) == 8 and all(c in "0123456789abcdefABCDEF" for c in part):
        return keyword_for_tag(int(part, 16)) or part
    return part


def _values(ds: Dataset, path: list[str]) -> list[str]:
    if not path:
        return []
    head, rest = path[0], path[1:]
    if head not in ds:
        return []
    value = ds.data_element(head).value  # type: ignore[union-attr]
    if rest:
        return [v for item in (value or []) for v in _values(item, rest)]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [] if value in (None, "") else [str(value)]


@dataclass
class Worklist:
    """Every workitem, in memory, and the log of state-change and update requests (for the tests)."""

    items: dict[str, Workitem] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, **entry: Any) -> None:
        self.log.append({"time": time.time(), **entry})

    def create(self, uid: str | None, ds: Dataset) -> str:
        """Create Workitem: a new SCHEDULED workitem; 409 when it exists, 400 when the data set is not acceptable."""
        with self.lock:
            uid = uid or str(ds.get("SOPInstanceUID", "") or "")
            if not uid:
                raise UpsFailure(400, "0120", "no workitem UID (neither in the URL nor SOPInstanceUID)")
            if uid in self.items:
                raise UpsFailure(409, "0111", "the workitem already exists")
            if "TransactionUID" in ds:
                raise UpsFailure(400, "0106", "Transaction UID shall not be present at creation")
            if str(ds.get("ProcedureStepState", "SCHEDULED") or "SCHEDULED") != "SCHEDULED":
                raise UpsFailure(400, "C309", "Procedure Step State must be SCHEDULED at creation")
            missing = [k for k in CREATE_REQUIRED if not ds.get(k)]
            if missing:
                raise UpsFailure(400, "0120", f"missing required attributes: {missing}")
            ds.SOPInstanceUID = uid
            ds.SOPClassUID = UPS_PUSH
            ds.ProcedureStepState = "SCHEDULED"
            self.items[uid] = Workitem(ds)
            self._note(op="create", workitem=uid, status=201)
            return uid

    def get(self, uid: str) -> Dataset:
        """Retrieve Workitem, without its Transaction UID."""
        with self.lock:
            item = self.items.get(uid)
            if item is None:
                raise UpsFailure(404, "C307", "no such workitem")
            return _public(item.ds)

    def update(self, uid: str, txn: str | None, changes: Dataset) -> None:
        """Update Workitem (whole sequences replace the workitem's)."""
        with self.lock:
            try:
                item = self._item(uid)
                if "ProcedureStepState" in changes or "TransactionUID" in changes:
                    raise UpsFailure(400, "0106", "an update may not set Procedure Step State or Transaction UID")
                if item.state in ("COMPLETED", "CANCELED"):
                    raise UpsFailure(400, "C300", f"the workitem is {item.state}: it may no longer be updated")
                if item.state == "SCHEDULED" and txn:
                    raise UpsFailure(400, "C301", "a SCHEDULED workitem is updated without a Transaction UID")
                if item.state == "IN PROGRESS" and txn != item.transaction_uid:
                    raise UpsFailure(400, "C301", "the Transaction UID is missing or incorrect")
                for elem in changes:
                    item.ds[elem.tag] = elem
                self._note(op="update", workitem=uid, transaction=txn, status=200,
                           keys=sorted(e.keyword for e in changes))
            except UpsFailure as exc:
                self._note(op="update", workitem=uid, transaction=txn, status=exc.http, code=exc.code)
                raise

    def change_state(self, uid: str, txn: str | None, state: str) -> str | None:
        """Change Workitem State; returns a warning (already in that state) or None."""
        with self.lock:
            try:
                warning = self._change(uid, txn, state)
                self._note(op="state", workitem=uid, transaction=txn, state=state, status=200, warning=warning)
                return warning
            except UpsFailure as exc:
                self._note(op="state", workitem=uid, transaction=txn, state=state, status=exc.http, code=exc.code)
                raise

    def _change(self, uid: str, txn: str | None, state: str) -> str | None:
        item = self._item(uid)
        if state not in STATES:
            raise UpsFailure(400, "0106", f"Procedure Step State {state!r} is not one of {STATES}")
        if not txn:
            raise UpsFailure(400, "C301", "the Transaction UID is missing")
        if state == "SCHEDULED":
            raise UpsFailure(409, "C303", "a UPS may only become SCHEDULED when it is created")
        if item.state in ("COMPLETED", "CANCELED"):
            if state == item.state and txn == item.transaction_uid:
                return f"The UPS is already in the requested state of {state}"
            raise UpsFailure(409, "C300", f"the workitem is {item.state}: it may no longer be updated")
        if state == "IN PROGRESS":
            if item.state == "IN PROGRESS":
                raise UpsFailure(409, "C302", "the workitem is already IN PROGRESS")
            item.transaction_uid = txn
            item.ds.ProcedureStepState = "IN PROGRESS"
            return None
        if item.state == "SCHEDULED":
            raise UpsFailure(409, "C310", "the workitem is not yet IN PROGRESS")
        if txn != item.transaction_uid:
            raise UpsFailure(400, "C301", "the Transaction UID is incorrect")
        problem = final_state_problem(item.ds, state)
        if problem:
            raise UpsFailure(400, "C304", f"final state requirements not met: {problem}")
        item.ds.ProcedureStepState = state
        return None

    def request_cancel(self, uid: str) -> str | None:
        """Request Cancellation: a SCHEDULED workitem is CANCELED; an IN PROGRESS one cannot be (no Event SOP)."""
        with self.lock:
            item = self._item(uid)
            if item.state == "CANCELED":
                return "The UPS is already in the requested state of CANCELED"
            if item.state != "SCHEDULED":
                raise UpsFailure(409, "C311", f"the workitem is {item.state}: its performer cannot be asked")
            item.ds.ProcedureStepState = "CANCELED"
            self._note(op="cancelrequest", workitem=uid, status=202)
            return None

    def search(self, query: dict[str, str], include_all: bool, include: list[str], limit: int, offset: int,
               fuzzy: bool) -> list[Dataset]:
        """Search Workitems (see the module docstring); :class:`UpsFailure` 400 for an unsupported key."""
        keys = {}
        for raw, value in query.items():
            path = [_keyword(p) for p in raw.split(".")]
            name = ".".join(path)
            if name not in SEARCHABLE:
                raise UpsFailure(400, "C000", f"{raw} is not a searchable attribute; allowed: {list(SEARCHABLE)}")
            keys[name] = (path, value)
        with self.lock:
            found = [item.ds for item in self.items.values()
                     if all(_match(item.ds, path, value, fuzzy) for path, value in keys.values())]
        out = []
        for ds in found[offset:offset + limit]:
            if include_all:
                out.append(_public(ds))
                continue
            view = Dataset()
            for kw in (*RETURN_KEYS, *(k.split(".")[0] for k in keys), *include):
                if kw in ds:
                    view[kw] = ds[kw]
            out.append(view)
        return out

    def _item(self, uid: str) -> Workitem:
        item = self.items.get(uid)
        if item is None:
            raise UpsFailure(404, "C307", "no such workitem")
        return item

    def transaction_of(self, uid: str) -> str | None:
        """The recorded Transaction UID (a test hook: the API never shows it)."""
        with self.lock:
            item = self.items.get(uid)
            return None if item is None else item.transaction_uid


def _public(ds: Dataset) -> Dataset:
    """A copy without the Transaction UID (PS3.18 11.5: it is the owner's lock)."""
    out = Dataset()
    for elem in ds:
        if elem.keyword != "TransactionUID":
            out[elem.tag] = elem
    return out


def _match(ds: Dataset, path: list[str], wanted: str, fuzzy: bool) -> bool:
    values = _values(ds, path)
    name = path[-1]
    if name == "ScheduledProcedureStepStartDateTime" and "-" in wanted:
        lo, _, hi = wanted.partition("-")
        return any((not lo or v >= lo) and (not hi or v[:len(hi)] <= hi) for v in values)
    if name == "PatientName" and fuzzy:
        words = [w for w in wanted.replace("^", " ").lower().split() if w]
        return any(all(any(part.startswith(w) for part in v.replace("^", " ").lower().split()) for w in words)
                   for v in values)
    return any(v.lower() == wanted.lower() for v in values)


assert all(tag_for_keyword(k.split(".")[-1]) for k in (*SEARCHABLE, *RETURN_KEYS))
