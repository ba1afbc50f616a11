"""MPPS and IAN SCPs on the node's AE title: the modality (or the PACS) says when a study is complete.

* **Modality Performed Procedure Step** (PS3.4 F, SOP class 1.2.840.10008.3.1.2.3.3; ``node.accept_mpps``):
  N-CREATE with Performed Procedure Step Status IN PROGRESS, then N-SET to COMPLETED or DISCONTINUED. The study
  is named by Scheduled Step Attributes Sequence > Study Instance UID (several items: each study); the instances
  by Performed Series Sequence > Referenced Image Sequence and > Referenced Non-Image Composite SOP Instance
  Sequence. An N-SET merges into the recorded data set (a sequence it carries replaces the recorded one).
* **Instance Availability Notification** (PS3.4 R, SOP class 1.2.840.10008.5.1.4.33; ``node.accept_ian``):
  N-CREATE naming a study and its instances (Referenced Series Sequence > Referenced SOP Sequence), what
  dcm4chee-arc sends once every instance of an MPPS is stored. Instances marked UNAVAILABLE are not waited for.

Each message is committed to the database before the response (:meth:`node.store.workflow.WorkflowPart.create_notice`,
``set_mpps``); a final MPPS or an IAN then arms its studies' checks at once (:mod:`node.flow.completion` decides).
The handlers use pynetdicom's public event API (``EVT_N_CREATE``, ``EVT_N_SET`` returning ``(status, dataset)``)
and are bound only when the option is on: the C-STORE path is not touched. Statuses (PS3.7 C): 0x0000; 0x0106
invalid attribute value (a status other than the state machine allows); 0x0111 duplicate SOP instance; 0x0112 no
such SOP instance; 0x0110 processing failure (an MPPS already final, or the database failed: nothing recorded);
0x0120 missing attribute (no Study Instance UID).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy.exc import SQLAlchemyError

from node.ops import metrics
from node.store.spool import is_valid_uid
from node.store.state import Store
from node.store.workflow import FINAL_MPPS, NoticeError, Ref

log = logging.getLogger(__name__)

MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
IAN_CLASS = "1.2.840.10008.5.1.4.33"
MPPS_STATES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")


class Arming(Protocol):
    """What the handlers need of :class:`node.flow.intake.Intake`."""

    def arm(self, study_uid: str, due_at: float) -> None: ...


class Auditing(Protocol):
    def record(self, event: str, outcome: str = "success", **fields: Any) -> None: ...


def add_contexts(ae: AE, mpps: bool, ian: bool) -> None:
    """Accept the MPPS and/or IAN SOP classes (default transfer syntaxes) on the node's AE."""
    if mpps:
        ae.add_supported_context(MPPS_CLASS)
    if ian:
        ae.add_supported_context(IAN_CLASS)


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def mpps_studies(ds: Dataset) -> list[str]:
    """The Study Instance UIDs an MPPS names (Scheduled Step Attributes Sequence), valid ones only."""
    out = [_text(item, "StudyInstanceUID") for item in ds.get("ScheduledStepAttributesSequence", [])]
    return list(dict.fromkeys(u for u in out if is_valid_uid(u)))


def mpps_refs(ds: Dataset) -> list[Ref]:
    """The instances an MPPS lists: Performed Series Sequence > Referenced Image Sequence and > Referenced
    Non-Image Composite SOP Instance Sequence."""
    refs = []
    for series in ds.get("PerformedSeriesSequence", []):
        series_uid = _text(series, "SeriesInstanceUID")
        for key in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in series.get(key, []):
                sop = _text(item, "ReferencedSOPInstanceUID")
                if is_valid_uid(sop):
                    refs.append(Ref(sop, _text(item, "ReferencedSOPClassUID"), series_uid))
    return refs


def ian_refs(ds: Dataset) -> list[Ref]:
    """The instances an IAN lists (Referenced Series Sequence > Referenced SOP Sequence), UNAVAILABLE ones left out."""
    refs = []
    for series in ds.get("ReferencedSeriesSequence", []):
        series_uid = _text(series, "SeriesInstanceUID")
        for item in series.get("ReferencedSOPSequence", []):
            sop = _text(item, "ReferencedSOPInstanceUID")
            if is_valid_uid(sop) and _text(item, "InstanceAvailability").upper() != "UNAVAILABLE":
                refs.append(Ref(sop, _text(item, "ReferencedSOPClassUID"), series_uid))
    return refs


def merge(recorded: Dataset, changes: Dataset) -> Dataset:
    """An N-SET's Modification List applied to the recorded data set (each element given replaces the recorded
    one, a sequence as a whole)."""
    for elem in changes:
        recorded[elem.tag] = elem
    return recorded


class NoticeHandlers:
    """``EVT_N_CREATE`` (MPPS, IAN) and ``EVT_N_SET`` (MPPS) of the node's AE; see the module docstring."""

    def __init__(self, store: Store, intake: Arming, audit: Auditing, *, mpps: bool, ian: bool) -> None:
        self.store = store
        self.intake = intake
        self.audit = audit
        self.mpps = mpps
        self.ian = ian

    def handlers(self) -> list[tuple[Any, Any]]:
        """The (event, handler) pairs to bind."""
        out: list[tuple[Any, Any]] = [(evt.EVT_N_CREATE, self.on_create)]
        if self.mpps:
            out.append((evt.EVT_N_SET, self.on_set))
        return out

    # -- N-CREATE ----------------------------------------------------------------------------------------------
    def on_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """EVT_N_CREATE: an MPPS (IN PROGRESS) or an IAN, recorded before the answer."""
        sop_class = str(event.request.AffectedSOPClassUID)
        kind = "mpps" if sop_class == MPPS_CLASS else "ian" if sop_class == IAN_CLASS else ""
        calling = event.assoc.requestor.ae_title.strip()
        host = event.assoc.requestor.address
        if not kind:
            return self._answer("n-create", 0x0118, None)  # No such SOP class (not negotiated here anyway)
        uid = str(event.request.AffectedSOPInstanceUID or "")
        reply: Dataset | None = None
        if not uid:  # the SCU left the UID to the SCP: PS3.7 10.1.5.1.4, returned in the response
            uid = generate_uid()
            reply = Dataset()
            reply.AffectedSOPInstanceUID = uid
        try:
            ds = event.attribute_list
        except Exception as exc:  # noqa: BLE001 - an undecodable attribute list
            log.warning("%s N-CREATE %s from %s: cannot decode the attribute list (%s)", kind.upper(), uid, calling,
                        type(exc).__name__)
            self._refused(kind, "create", uid, calling, host, 0x0106, "the attribute list cannot be decoded")
            return self._answer(f"{kind}-create", 0x0106, None)
        if kind == "mpps":
            state = _text(ds, "PerformedProcedureStepStatus").upper()
            if state != "IN PROGRESS":
                log.warning("MPPS N-CREATE %s from %s: status %r, IN PROGRESS expected (0x0106)", uid, calling, state)
                self._refused(kind, "create", uid, calling, host, 0x0106, "status is not IN PROGRESS")
                return self._answer("mpps-create", 0x0106, None)
            studies, refs = mpps_studies(ds), mpps_refs(ds)
        else:
            state = "AVAILABLE"
            study = _text(ds, "StudyInstanceUID")
            studies, refs = ([study] if is_valid_uid(study) else []), ian_refs(ds)
        if not studies:
            log.warning("%s N-CREATE %s from %s names no valid Study Instance UID (0x0120)", kind.upper(), uid, calling)
            self._refused(kind, "create", uid, calling, host, 0x0120, "no valid Study Instance UID")
            return self._answer(f"{kind}-create", 0x0120, None)
        status = self._record(kind, "create", uid, calling, lambda: self.store.create_notice(
            kind, uid, studies, state, calling, ds.to_json() if kind == "mpps" else None, refs),
            host=host, studies=studies, state=state)
        if status == 0x0000:
            log.info("%s %s from %s: %s, study %s, %d instance(s) listed", kind.upper(), uid, calling, state,
                     ", ".join(studies), len(refs))
        return self._answer(f"{kind}-create", status, reply if status == 0x0000 else None)

    # -- N-SET (MPPS) ------------------------------------------------------------------------------------------
    def on_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """EVT_N_SET: an MPPS update (COMPLETED, DISCONTINUED or still IN PROGRESS), recorded before the answer."""
        calling = event.assoc.requestor.ae_title.strip()
        host = event.assoc.requestor.address
        uid = str(event.request.RequestedSOPInstanceUID or "")
        if str(event.request.RequestedSOPClassUID) != MPPS_CLASS:
            return self._answer("n-set", 0x0118, None)
        recorded = self.store.mpps(uid)
        if recorded is None:
            log.warning("MPPS N-SET %s from %s: no such MPPS (0x0112)", uid, calling)
            self._refused("mpps", "set", uid, calling, host, 0x0112, "no such MPPS")
            return self._answer("mpps-set", 0x0112, None)
        try:
            changes = event.modification_list
            ds = merge(Dataset.from_json(recorded["dataset"] or "{}"), changes)
        except Exception as exc:  # noqa: BLE001 - an undecodable modification list
            log.warning("MPPS N-SET %s from %s: cannot decode the modification list (%s)", uid, calling,
                        type(exc).__name__)
            self._refused("mpps", "set", uid, calling, host, 0x0106, "the modification list cannot be decoded")
            return self._answer("mpps-set", 0x0106, None)
        state = _text(ds, "PerformedProcedureStepStatus").upper()
        if state not in MPPS_STATES:
            log.warning("MPPS N-SET %s from %s: status %r is not one of %s (0x0106)", uid, calling, state, MPPS_STATES)
            self._refused("mpps", "set", uid, calling, host, 0x0106, f"status is not one of {', '.join(MPPS_STATES)}")
            return self._answer("mpps-set", 0x0106, None)
        studies = mpps_studies(ds) or list(recorded["study_uids"])
        refs = mpps_refs(ds)
        status = self._record("mpps", "set", uid, calling,
                              lambda: self.store.set_mpps(uid, state, ds.to_json(), studies, refs),
                              host=host, studies=studies, state=state)
        if status == 0x0000:
            log.info("MPPS %s from %s: %s, study %s, %d instance(s) listed", uid, calling, state, ", ".join(studies),
                     len(refs))
        return self._answer("mpps-set", status, None)

    # -- shared ------------------------------------------------------------------------------------------------
    def _record(self, kind: str, verb: str, uid: str, calling: str, write: Any, *, host: str | None = None,
                studies: Sequence[str] = (), state: str = "") -> int:
        """Run the database write; arm the checks of the studies it watches. The DIMSE status."""
        try:
            watched: Sequence[str] = write()
        except NoticeError as exc:
            log.warning("%s %s %s from %s refused (0x%04X): %s", kind.upper(), verb, uid, calling, exc.status, exc)
            self._refused(kind, verb, uid, calling, host, exc.status, str(exc), studies)
            return exc.status
        except SQLAlchemyError as exc:
            log.error("%s %s %s from %s: not recorded (0x0110): %s", kind.upper(), verb, uid, calling,
                      type(exc).__name__)
            self._refused(kind, verb, uid, calling, host, 0x0110, f"not recorded ({type(exc).__name__})", studies)
            return 0x0110
        self.audit.record(f"{kind}-received", calling_ae=calling, peer_host=host, sop_instance_uid=uid,
                          sop_class_uid=MPPS_CLASS if kind == "mpps" else IAN_CLASS, operation=f"n-{verb}",
                          study_uids=list(studies), state=state, status="0x0000")
        for study in watched:
            self.intake.arm(study, time.time())  # its MPPS/IAN may complete it now
        return 0x0000

    def _refused(self, kind: str, verb: str, uid: str, calling: str, host: str | None, status: int, why: str,
                 studies: Sequence[str] = ()) -> None:
        """The audit line of an MPPS or IAN refused with ``status`` (an ATNA Procedure Record, outcome 4)."""
        self.audit.record(f"{kind}-received", "minor-failure", calling_ae=calling, peer_host=host,
                          sop_instance_uid=uid, sop_class_uid=MPPS_CLASS if kind == "mpps" else IAN_CLASS,
                          operation=f"n-{verb}", study_uids=list(studies), status=f"0x{status:04X}",
                          reason=f"refused 0x{status:04X}: {why}")

    @staticmethod
    def _answer(message: str, status: int, reply: Dataset | None) -> tuple[int, Dataset | None]:
        metrics.workflow_message(message, status)
        return status, reply


__all__ = ["FINAL_MPPS", "IAN_CLASS", "MPPS_CLASS", "NoticeHandlers", "add_contexts", "ian_refs", "merge",
           "mpps_refs", "mpps_studies"]
