"""Recovery: the periodic sweep re-enqueues what a crash or a lost task left behind; retention purges."""

from __future__ import annotations

import logging

from node.flow import circuit
from node.flow.decide import resolve_all
from node.flow.services import Services
from node.hl7.settings import MllpListenerSection

log = logging.getLogger(__name__)


def sweep(svc: Services, fresh_start: bool = False) -> None:
    """Re-enqueue what a crash or a lost task left behind. Every task it enqueues is idempotent.

    ``fresh_start`` (the worker's start): also re-arm the quiet timers of studies still receiving, which live in
    memory and died with the process that armed them.
    """
    stale = svc.intake.stale_work(fresh_start=fresh_start)
    for study_uid in stale["studies"]:
        svc.queue.check_study(study_uid)
    if fresh_start:
        svc.intake.rearm()
    for job_id in stale["jobs"]:
        svc.queue.enqueue_job(job_id)
    for dest in stale["destinations"]:
        svc.queue.enqueue_delivery(dest)
    circuit.due_probes(svc)  # an open circuit whose probe's worker died, or whose scheduled probe was lost
    resolve_all(svc)
    purged = svc.store.purge_delivered(svc.cfg.retention.purge_delivered_after_hours * 3600.0,
                                       svc.cfg.retention.keep_failed_hours * 3600.0, on_purged=_audit_purge(svc))
    hl7 = svc.cfg.mllp or MllpListenerSection()  # orders and HL7 messages age out too (node/store/hl7.py)
    svc.store.purge_hl7(hl7.keep_messages_hours * 3600.0, hl7.keep_unmatched_orders_hours * 3600.0)
    retention = svc.cfg.retention  # MPPS/IAN of studies long gone (or never received), decisions of purged studies
    svc.store.purge_workflow(3600.0 * max(retention.purge_delivered_after_hours, retention.keep_failed_hours))
    if not fresh_start:  # agreement and drift (node/monitoring): retention, and the evaluation when it is due
        try:
            from node.monitoring.evaluate import upkeep as monitoring_upkeep  # scipy: loaded after the start

            monitoring_upkeep(svc)
        except Exception:  # noqa: BLE001 - the rest of the sweep goes on; the next sweep tries again
            log.exception("sweep: monitoring upkeep failed")
    leftovers = svc.spool.remove_stale_tmp()
    if leftovers:
        log.warning("sweep: removed %d file(s) left in the spool's tmp folder by receives that died", leftovers)
    if any(stale.values()) or purged:
        log.info("sweep: re-enqueued %d studies, %d jobs, %d destinations; purged %d studies",
                 len(stale["studies"]), len(stale["jobs"]), len(stale["destinations"]), purged)


def _audit_purge(svc: Services):
    """The ``study-deleted`` audit event of each study retention purges (an ATNA DICOM Study Deleted)."""
    from node.ops.audit import audit_log

    def record(study_uid: str, classes: dict[str, int]) -> None:
        audit_log(svc.cfg).record("study-deleted", study_uid=study_uid, sop_classes=classes,
                                  instances=sum(classes.values()), reason="retention (node.retention): purged")
    return record
