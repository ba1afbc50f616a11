"""Return: the durable outbox. One row per result instance and destination; a row is delivered once.

A ``deliver(destination)`` task leases that destination's due rows, sends them over one association and
settles each row: delivered, pending again after a jittered backoff, or parked with the reason (an alert in
the log and in ``dicom-node status``; ``dicom-node retry`` puts parked rows back).

A row whose previous C-STORE may have reached the PACS unseen (the node died mid-send, or no answer came) is
not simply sent again: with ``storage_commitment`` the PACS is asked to commit it (committed: delivered, no
resend; failed: sent again); with ``verify_by: c-find`` it is looked up; with neither it is resent
(at-least-once, same SOP Instance UID). With ``storage_commitment`` a stored result is ``acknowledged`` until
the PACS reports it ``committed``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import pydicom
from sqlalchemy import select
from pydicom.uid import generate_uid

from node.ops.audit import audit_log
from node.config import DestinationSection, NodeConfig
from node.dicom.commitment import request_commitment
from node.dicom.scu import OutgoingFile, SendOutcome, send_files
from node.flow.heartbeat import Heartbeat
from node.ops import metrics
from node.store.schema import studies
from node.dicom.verify import InstanceRef, VerifyError, held_instances
from node.ops.failpoints import failpoint
from node.store.state import Store

if TYPE_CHECKING:  # pragma: no cover
    from node.flow.services import Services

log = logging.getLogger(__name__)


class Sender(Protocol):
    """One kind of destination: send ``files`` over one connection, one :class:`SendOutcome` per file key.

    An outcome's verdict says what the outbox does with the row: delivered, retry (limited or not) or park.
    """

    def __call__(self, dest: DestinationSection, calling_ae: str,
                 files: Sequence[OutgoingFile]) -> dict[int, SendOutcome]: ...


def sender_for(dest: DestinationSection) -> Sender:
    """How results reach ``dest``: C-STORE (:func:`node.dicom.scu.send_files`), the one kind of destination today.

    A new kind (DICOMweb STOW-RS, say) is one module with a :class:`Sender`, chosen here by the destination's type.
    ``type: dicomweb``: STOW-RS (:func:`node.dicomweb.stow.send_stow`); ``type: hl7v2``: ORU^R01 over MLLP
    (:func:`node.hl7.sender.send_hl7`); ``type: fhir``: a transaction Bundle (:func:`node.fhir.sender.send_fhir`).
    """
    if dest.type == "dicomweb":
        from node.dicomweb.stow import send_stow

        return send_stow
    if dest.type == "hl7v2":
        from node.hl7.sender import send_hl7

        return send_hl7
    if dest.type == "fhir":
        from node.fhir.sender import send_fhir

        return send_fhir
    return send_files


def backoff_seconds(attempts: int, dest: DestinationSection) -> float:
    """Full-jitter exponential backoff: uniform(0.5, 1) x initial x 2^(attempts-1), capped."""
    base = min(dest.backoff_max_seconds, dest.backoff_initial_seconds * (2 ** max(0, attempts - 1)))
    return base * random.uniform(0.5, 1.0)


@dataclass
class DeliveryReport:
    """What one delivery pass did for a destination."""
    delivered: int = 0
    verified: int = 0  # unseen sends found at the PACS, not sent again
    awaiting_commitment: int = 0
    retrying: int = 0
    parked: int = 0
    more_due: bool = False


def deliver_due(store: Store, cfg: NodeConfig, destination: str, owner: str, *, batch: int = 64) -> DeliveryReport:
    """Send what is due for one destination; returns what happened (for logs and rescheduling)."""
    dest = cfg.destinations.get(destination)
    report = DeliveryReport()
    rows = store.claim_outbox(destination, owner, cfg.queue.lease_seconds, limit=batch)
    if not rows:
        return report
    if dest is None:
        for row in rows:
            store.settle_outbox(row["id"], row["lease_owner"], state="parked", status="config",
                                error=f"destination {destination!r} is no longer in the configuration")
        report.parked = len(rows)
        return report
    t = time.time()
    token, lease = rows[0]["lease_owner"], cfg.queue.lease_seconds
    with Heartbeat(lambda: store.renew_outbox_lease(token, lease), lease, f"send to {destination}"):
        send_rows, ask_rows = _verify_unseen(store, cfg, dest, destination, rows, report)
        failpoint("delivering")
        files = [OutgoingFile(key=row["id"], path=Path(row["path"]), sop_class_uid=row["sop_class_uid"])
                 for row in send_rows]
        outcomes = sender_for(dest)(dest, cfg.node.ae_title, files) if files else {}
    txn = generate_uid() if dest.storage_commitment else None
    commit_due = t + dest.commitment_timeout_seconds
    for row in ask_rows:  # stored or not? the commitment report answers
        store.settle_outbox(row["id"], row["lease_owner"], state="verifying", status=row["last_status"],
                            error=None, commit_txn=txn, commit_due_at=commit_due)
    to_commit = list(ask_rows)
    for row in send_rows:
        out: SendOutcome = outcomes[row["id"]]
        attempts = int(row["attempts"])
        too_old = t - float(row["created_at"]) > dest.give_up_after_seconds
        if out.verdict == "delivered":
            if txn is not None:
                store.settle_outbox(row["id"], row["lease_owner"], state="acknowledged", status=out.status,
                                    error=None, commit_txn=txn, commit_due_at=commit_due)
                to_commit.append(row)
                report.awaiting_commitment += 1
            else:
                store.settle_outbox(row["id"], row["lease_owner"], state="delivered", status=out.status, error=None)
                report.delivered += 1
            metrics.sent(destination, out.status, "delivered", _since_last_instance(store, row["study_uid"], t))
            log.info("delivered result %s to %s (%s)", row["result_uid"], destination, out.status)
            audit_log(cfg).record(_event(dest, "sent"), **_where(row, destination, dest), status=out.status)
            continue
        limit = dest.max_processing_failure_attempts if out.verdict == "retry_limited" else dest.max_attempts
        if out.verdict == "park" or attempts >= limit or too_old:
            if out.verdict == "park":
                why = out.reason
            elif attempts >= limit:
                why = f"{out.reason}; gave up after {attempts} attempts"
            else:
                why = (f"{out.reason}; not delivered within give_up_after_seconds "
                       f"({dest.give_up_after_seconds:g} s, {attempts} attempts)")
            store.settle_outbox(row["id"], row["lease_owner"], state="parked", status=out.status, error=why)
            metrics.sent(destination, out.status, "parked", None)
            report.parked += 1
            log.error("ALERT: result %s parked for %s: %s (%s)", row["result_uid"], destination, why, out.status)
            audit_log(cfg).record(_event(dest, "parked"), "serious-failure", **_where(row, destination, dest),
                                  status=out.status, reason=why)
            continue
        store.settle_outbox(row["id"], row["lease_owner"], state="pending", status=out.status, error=out.reason,
                            retry_at=t + backoff_seconds(attempts, dest), in_flight=out.unseen)
        metrics.sent(destination, out.status, "retry", None)
        report.retrying += 1
        log.warning("result %s to %s will be retried: %s (%s, attempt %d)", row["result_uid"], destination,
                    out.reason, out.status, attempts)
    if txn is not None and to_commit:
        _ask_commitment(store, cfg, dest, destination, to_commit, txn)
    report.more_due = len(rows) >= batch
    return report


def _verify_unseen(store: Store, cfg: NodeConfig, dest: DestinationSection, destination: str,
                   rows: list[dict], report: DeliveryReport) -> tuple[list[dict], list[dict]]:
    """Split claimed rows into (send now, ask by Storage Commitment); settle those a C-FIND finds stored."""
    unseen = [r for r in rows if r.get("verify_first")]
    if not unseen:
        return rows, []
    if dest.storage_commitment:
        log.info("%d result(s) to %s may have been stored unseen: asking for Storage Commitment first",
                 len(unseen), destination)
        ids = {r["id"] for r in unseen}
        return [r for r in rows if r["id"] not in ids], unseen
    if dest.verify_by != "c-find":
        return rows, []  # at-least-once: the same SOP Instance UIDs again
    from node.audit.queries import record_query

    def audited(query: pydicom.Dataset, matches: int | None, error: BaseException | None) -> None:
        record_query(cfg, destination, dest, query, str(query.get("StudyInstanceUID", "")) or None, matches, error,
                     "verify-query")

    try:
        held = held_instances(dest, cfg.node.ae_title, [_ref(r) for r in unseen], on_query=audited)
    except (VerifyError, OSError, ValueError) as exc:
        t = time.time()
        for r in unseen:  # never resend what might be there: ask again later
            store.settle_outbox(r["id"], r["lease_owner"], state="pending", status="verify", in_flight=True,
                                error=f"cannot verify an unseen send before resending it: {exc}",
                                retry_at=t + backoff_seconds(int(r["attempts"]), dest))
            report.retrying += 1
        ids = {r["id"] for r in unseen}
        return [r for r in rows if r["id"] not in ids], []
    for r in unseen:
        if r["result_uid"] in held:
            store.settle_outbox(r["id"], r["lease_owner"], state="delivered", status="verified", error=None)
            report.verified += 1
            log.info("result %s is already at %s (C-FIND): not sent again", r["result_uid"], destination)
    return [r for r in rows if r["result_uid"] not in held or not r.get("verify_first")], []


def _ref(row: dict) -> InstanceRef:
    header = pydicom.dcmread(row["path"], stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    return InstanceRef(str(row["study_uid"]), str(header.SeriesInstanceUID), str(row["result_uid"]))


def _ask_commitment(store: Store, cfg: NodeConfig, dest: DestinationSection, destination: str,
                    rows: list[dict], txn: str) -> None:
    """Send the Storage Commitment request for ``rows`` (their transaction UID is already stored)."""
    refs = [(str(r["sop_class_uid"]), str(r["result_uid"])) for r in rows]
    why = request_commitment(dest, cfg.node.ae_title, txn, refs,
                             on_report=lambda rep: store.record_commitment(rep.transaction_uid, rep.committed,
                                                                          rep.failed))
    if why is None:
        log.info("asked %s to commit %d result(s) (transaction %s)", destination, len(rows), txn)
        failpoint("commitment_requested")
    else:
        log.warning("Storage Commitment request to %s failed (%s); asking again in %g s", destination, why,
                    dest.commitment_timeout_seconds)


def recommit_overdue(store: Store, cfg: NodeConfig, destination: str) -> int:
    """Ask again for the commitment of rows whose report is overdue (a new transaction); returns how many."""
    dest = cfg.destinations.get(destination)
    if dest is None or not dest.storage_commitment:
        return 0
    rows = store.claim_overdue_commitments(destination, time.time() + dest.commitment_timeout_seconds)
    if rows:
        txn = generate_uid()
        store.set_commit_txn([r["id"] for r in rows], txn)
        asked = max(int(r["attempts"]) for r in rows)
        if asked >= 4:  # stored (acknowledged) but never committed: the PACS may not know how to reach the node
            log.error("ALERT: %s has not reported Storage Commitment for %d result(s) after %d requests; is this "
                      "node's AE declared on the PACS? asking again", destination, len(rows), asked)
        else:
            log.warning("no Storage Commitment report from %s for %d result(s): asking again", destination,
                        len(rows))
        _ask_commitment(store, cfg, dest, destination, rows, txn)
    return len(rows)


def _since_last_instance(store: Store, study_uid: str, t: float) -> float | None:
    """Seconds from the study's last received instance to ``t`` (for the delivery-time histogram)."""
    with store.engine.connect() as conn:
        last = conn.execute(select(studies.c.last_received_at).where(studies.c.study_uid == study_uid)).scalar()
    return None if last is None else t - float(last)


def _event(dest: DestinationSection, what: str) -> str:
    """The audit event of a send: ``report-sent`` / ``-parked`` for a RIS or an EHR (an ATNA Export: the report
    leaves the imaging domain), ``result-sent`` / ``-parked`` for DICOM instances (Instances Transferred)."""
    return f"report-{what}" if dest.type in ("hl7v2", "fhir") else f"result-{what}"


def _where(row, destination: str, dest: DestinationSection) -> dict:
    """Audit fields of one outbox row: what (UIDs) went where (destination, AE title, address, TLS)."""
    return {"destination": destination, "destination_type": dest.type, "destination_ae": dest.ae_title,
            "destination_host": dest.host,
            "destination_port": dest.port, "tls": dest.tls is not None or str(dest.url).startswith("https:"),
            "destination_url": dest.url, "study_uid": row["study_uid"],
            "sop_instance_uid": row["result_uid"], "sop_class_uid": row["sop_class_uid"]}


def deliver(svc: "Services", destination: str) -> None:
    """The ``deliver`` task: send what is due for ``destination``; schedule the next attempt of what must wait."""
    recommit_overdue(svc.store, svc.cfg, destination)
    report = deliver_due(svc.store, svc.cfg, destination, svc.owner)
    if report.more_due:
        svc.queue.enqueue_delivery(destination)
        return
    for dest, due in svc.store.due_destinations():
        if dest == destination:
            svc.queue.enqueue_delivery(destination, delay=max(0.0, due - time.time()))
