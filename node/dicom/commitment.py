"""Storage Commitment Push Model (PS3.4 J) as SCU: ask a PACS to commit results, and read its answer.

The node sends an N-ACTION (Request Storage Commitment) naming the results it stored there, under a Transaction
UID it keeps in the outbox. The PACS answers later with an N-EVENT-REPORT: on the same association if it is
still open, or (Orthanc, most PACS) on a new association to the node's own AE title, which must therefore be
declared on the PACS (Orthanc: ``DicomModalities``). Either way :func:`report_handler` turns the report into a
:class:`CommitmentReport` for the store. A failed SOP instance in the report is sent again; a committed one is
delivered for good.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from node.config import DestinationSection
from node.dicom.tls import client_tls_args

log = logging.getLogger(__name__)

#: the well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5)
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
ALL_COMMITTED, SOME_FAILED = 1, 2  # N-EVENT-REPORT Event Type IDs


@dataclass(frozen=True)
class CommitmentReport:
    """What the PACS said about one transaction: SOP Instance UIDs committed and failed."""

    transaction_uid: str
    committed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def request_dataset(transaction_uid: str, refs: Sequence[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information: the Transaction UID and (SOP Class UID, SOP Instance UID) pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def request_commitment(dest: DestinationSection, calling_ae: str, transaction_uid: str,
                       refs: Sequence[tuple[str, str]],
                       on_report: Callable[[CommitmentReport], None] | None = None) -> str | None:
    """Send one Storage Commitment request; returns None when the PACS accepted it, else why not.

    ``on_report`` also takes an N-EVENT-REPORT the PACS sends back on this association while it is open.
    """
    ae = AE(ae_title=calling_ae)
    for timeout in ("acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, timeout, dest.timeout_seconds)
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    handlers = [(evt.EVT_N_EVENT_REPORT, report_handler(on_report))] if on_report else []
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=handlers,
                             tls_args=client_tls_args(dest.tls, dest.host))
    except (OSError, RuntimeError) as exc:
        return f"cannot associate for Storage Commitment: {exc}"
    if not assoc.is_established:
        return "the destination refused or dropped the Storage Commitment association"
    try:
        status, _ = assoc.send_n_action(request_dataset(transaction_uid, refs), REQUEST_COMMITMENT,
                                        StorageCommitmentPushModel, COMMITMENT_INSTANCE)
    except (OSError, RuntimeError, ValueError) as exc:
        return f"N-ACTION failed: {exc}"
    finally:
        if assoc.is_established:
            assoc.release()
    if status is None or "Status" not in status:
        return "no N-ACTION response (timeout or abort)"
    if int(status.Status) != 0x0000:
        return f"the destination refused the Storage Commitment request (0x{int(status.Status):04X})"
    return None


def parse_report(event_type_id: int, info: Dataset | None) -> CommitmentReport | None:
    """Read an N-EVENT-REPORT's Event Information; None when it is not a commitment result."""
    if event_type_id not in (ALL_COMMITTED, SOME_FAILED) or info is None or "TransactionUID" not in info:
        return None
    committed = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])
                 if "ReferencedSOPInstanceUID" in i]
    failed = [str(i.ReferencedSOPInstanceUID) for i in info.get("FailedSOPSequence", [])
              if "ReferencedSOPInstanceUID" in i]
    return CommitmentReport(str(info.TransactionUID), committed, failed)


def report_handler(on_report: Callable[[CommitmentReport], None] | None) -> Callable[[evt.Event], Any]:
    """An EVT_N_EVENT_REPORT handler that passes each commitment result to ``on_report``, answering Success."""

    def handle(event: evt.Event) -> tuple[int, None]:
        try:
            report = parse_report(int(event.event_type), event.event_information)
        except (AttributeError, ValueError, TypeError) as exc:
            log.warning("unreadable N-EVENT-REPORT from %s: %s", event.assoc.requestor.ae_title, exc)
            return 0x0110, None
        if report is None:
            return 0x0113, None  # No such event type
        log.info("storage commitment report %s: %d committed, %d failed", report.transaction_uid,
                 len(report.committed), len(report.failed))
        if on_report is not None:
            on_report(report)
        return 0x0000, None

    return handle


def add_report_context(ae: AE) -> None:
    """Let a PACS open an association to this AE to send Storage Commitment reports (it acts as SCP there)."""
    ae.add_supported_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                             scu_role=True, scp_role=True)
