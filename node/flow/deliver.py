"""Return: the durable outbox. One row per result instance and destination; a row is delivered once.

A ``deliver(destination)`` task leases that destination's due rows, sends them over one association and
settles each row: delivered, pending again after a jittered backoff, or parked with the reason (an alert in
the log and in ``dicom-node status``; ``dicom-node retry`` puts parked rows back).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from sqlalchemy import select

from node.ops import metrics
from node.ops.audit import audit_log
from node.config import DestinationSection, NodeConfig
from node.dicom.scu import OutgoingFile, SendOutcome, send_files
from node.flow.heartbeat import Heartbeat
from node.store.schema import studies
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
    ``type: dicomweb``: STOW-RS (:func:`node.dicomweb.stow.send_stow`).
    """
    if dest.type == "dicomweb":
        from node.dicomweb.stow import send_stow

        return send_stow
    return send_files


def backoff_seconds(attempts: int, dest: DestinationSection) -> float:
    """Full-jitter exponential backoff: uniform(0.5, 1) x initial x 2^(attempts-1), capped."""
    base = min(dest.backoff_max_seconds, dest.backoff_initial_seconds * (2 ** max(0, attempts - 1)))
    return base * random.uniform(0.5, 1.0)


@dataclass
class DeliveryReport:
    """What one delivery pass did for a destination."""
    delivered: int = 0
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
    files = [OutgoingFile(key=row["id"], path=Path(row["path"]), sop_class_uid=row["sop_class_uid"]) for row in rows]
    token, lease = rows[0]["lease_owner"], cfg.queue.lease_seconds
    with Heartbeat(lambda: store.renew_outbox_lease(token, lease), lease, f"send to {destination}"):
        outcomes = sender_for(dest)(dest, cfg.node.ae_title, files)
    t = time.time()
    for row in rows:
        out: SendOutcome = outcomes[row["id"]]
        attempts = int(row["attempts"])
        too_old = t - float(row["created_at"]) > dest.give_up_after_seconds
        if out.verdict == "delivered":
            store.settle_outbox(row["id"], row["lease_owner"], state="delivered", status=out.status, error=None)
            metrics.sent(destination, out.status, "delivered", _since_last_instance(store, row["study_uid"], t))
            report.delivered += 1
            log.info("delivered result %s to %s (%s)", row["result_uid"], destination, out.status)
            audit_log(cfg).record("result-sent", **_where(row, destination, dest), status=out.status)
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
            audit_log(cfg).record("result-parked", "serious-failure", **_where(row, destination, dest),
                                  status=out.status, reason=why)
            continue
        store.settle_outbox(row["id"], row["lease_owner"], state="pending", status=out.status, error=out.reason,
                            retry_at=t + backoff_seconds(attempts, dest))
        metrics.sent(destination, out.status, "retry", None)
        report.retrying += 1
        log.warning("result %s to %s will be retried: %s (%s, attempt %d)", row["result_uid"], destination,
                    out.reason, out.status, attempts)
    report.more_due = len(rows) >= batch
    return report


def _since_last_instance(store: Store, study_uid: str, t: float) -> float | None:
    """Seconds from the study's last received instance to ``t`` (for the delivery-time histogram)."""
    with store.engine.connect() as conn:
        last = conn.execute(select(studies.c.last_received_at).where(studies.c.study_uid == study_uid)).scalar()
    return None if last is None else t - float(last)


def _where(row, destination: str, dest: DestinationSection) -> dict:
    """Audit fields of one outbox row: what (UIDs) went where (destination, AE title, address, TLS)."""
    return {"destination": destination, "destination_ae": dest.ae_title, "destination_host": dest.host,
            "destination_port": dest.port, "tls": dest.tls is not None or str(dest.url).startswith("https:"),
            "destination_url": dest.url, "study_uid": row["study_uid"],
            "sop_instance_uid": row["result_uid"], "sop_class_uid": row["sop_class_uid"]}


def deliver(svc: "Services", destination: str) -> None:
    """The ``deliver`` task: send what is due for ``destination``; schedule the next attempt of what must wait."""
    report = deliver_due(svc.store, svc.cfg, destination, svc.owner)
    if report.more_due:
        svc.queue.enqueue_delivery(destination)
        return
    for dest, due in svc.store.due_destinations():
        if dest == destination:
            svc.queue.enqueue_delivery(destination, delay=max(0.0, due - time.time()))
