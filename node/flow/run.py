"""Run one job: convert -> invoke -> write through the model's pipeline, then commit its results and outbox rows."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pydicom

from converters.scrub import without_burned_in
from node.flow import circuit
from node.flow.decide import mixed_patients_reason, resolve_waiting
from node.flow.heartbeat import Heartbeat
from node.flow.services import Services
from node.invoke.client import EndpointError
from node.monitoring.observe import call_ended, job_writes
from node.models.base import JobContext
from node.models.cxrreportgen.priors import PriorFetcher
from node.models.registry import pipeline_for
from node.ops import metrics
from node.ops.audit import audit_log
from node.ops.failpoints import failpoint
from node.reports.job import job_report_rows
from node.store.embeddings import study_labels
from node.store.spool import write_durably

log = logging.getLogger(__name__)

def run_job(svc: Services, job_id: int) -> None:
    """Run one job under a lease; its results and outbox rows are committed together at the end.

    Convert, invoke and write are the model's pipeline (:func:`node.models.registry.pipeline_for`); this function
    is what every model shares: the lease (renewed by a heartbeat while the job runs), the study checks and the
    egress policy before anything leaves, the endpoint's circuit and the retry of a failed endpoint call
    (:mod:`node.flow.circuit`), the durable result files and the one transaction that finishes the job.
    """
    lease = svc.cfg.queue.lease_seconds
    job = svc.store.claim_job(job_id, svc.owner, lease)
    if job is None:
        return  # done already, or another worker holds it
    # the lease is short and renewed while this worker is on the job: a slow model call is never taken over
    with Heartbeat(lambda: svc.store.renew_job_lease(job_id, svc.owner, lease), lease, f"job {job_id}"):
        _run_claimed(svc, job)


def _run_claimed(svc: Services, job: dict[str, Any]) -> None:
    job_id = job["id"]
    rule = next((r for r in svc.cfg.rules if r.name == job["rule_name"]), None)
    if rule is None or job["endpoint"] not in svc.cfg.endpoints:
        svc.store.finish_job(job_id, svc.owner, state="failed",
                              outcome=f"rule {job['rule_name']!r} or its endpoint is no longer configured")
        _count(svc, job, "failed")
        return
    endpoint = svc.cfg.endpoints[job["endpoint"]]
    series = set(json.loads(job["series_uids"]))
    paths = [Path(r["path"]) for r in svc.store.study_instances(job["study_uid"]) if r["series_uid"] in series]
    mixed = mixed_patients_reason(paths)
    if mixed:  # nothing leaves: a study mixing patients is an identification error upstream
        svc.store.finish_job(job_id, svc.owner, state="failed", outcome=mixed)
        _count(svc, job, "failed")
        log.error("job %d (study %s) failed: %s", job_id, job["study_uid"], mixed)
        _after_job(svc, job["study_uid"])
        return
    paths, burned_note = without_burned_in(paths, rule.params)  # BurnedInAnnotation=YES images never leave
    if not paths:
        refusal = f"not sent: {burned_note}"
        svc.store.finish_job(job_id, svc.owner, state="skipped", outcome=refusal)
        _count(svc, job, "skipped")
        log.info("job %d (study %s, rule %s) skipped: %s", job_id, job["study_uid"], rule.name, refusal)
        _after_job(svc, job["study_uid"])
        return
    ctx = JobContext(job=job, rule=rule, endpoint_name=job["endpoint"], endpoint=endpoint,
                     client=svc.client(job["endpoint"]), instance_paths=paths,
                     previous_results=lambda kind: _previous(svc, job, kind),
                     classifications=_labels(svc, job["study_uid"]), store=svc.store,
                     prior_lookup=_prior_lookup(svc),
                     result_kinds=frozenset(k for kinds in _result_kinds(svc, rule.send_to).values() for k in kinds),
                     orders=svc.store.order_for_accession)
    waiting = circuit.admit(svc, job)
    if waiting is not None:  # the endpoint is down: wait for it with the rest of its backlog, call nothing
        _wait_for_endpoint(svc, job, endpoint.give_up_after_seconds, waiting)
        return
    t0 = time.monotonic()
    try:
        output = pipeline_for(endpoint.model)(ctx)
        if burned_note:
            output.outcome = f"{output.outcome}; {burned_note}"
    except EndpointError as exc:
        call_ended(svc, job, "error" if exc.permanent else "transient", exc.status)  # drift (node/monitoring)
        _endpoint_failed(svc, job, exc)
        return
    except Exception as exc:
        # Exception messages may quote header values (PHI): the type at ERROR, the traceback at DEBUG only.
        log.error("job %d (study %s) failed: %s (details in `dicom-node status`)", job_id, job["study_uid"],
                  type(exc).__name__)
        log.debug("job %d traceback", job_id, exc_info=True)
        svc.store.finish_job(job_id, svc.owner, state="failed", outcome=f"{type(exc).__name__}: {exc}")
        _count(svc, job, "failed")
        _audit_job(svc, job, "job-failed", "serious-failure", reason=type(exc).__name__)
        _after_job(svc, job["study_uid"])
        return
    if output.state == "done":  # a skipped job sent nothing
        _audit_job(svc, job, "model-request", result=output.outcome)
    rows = []
    for kind, ds in output.results:
        path = svc.spool.result_path(job["study_uid"], str(ds.SOPInstanceUID))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        write_durably(path, buf.getvalue())
        rows.append({"sop_instance_uid": str(ds.SOPInstanceUID), "study_uid": job["study_uid"],
                     "series_uid": str(ds.SeriesInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                     "kind": kind, "path": str(path)})
    rows += job_report_rows(svc, job, rule.send_to, output.results, paths) if rows else []  # RIS/EHR (node/reports)
    observed = job_writes(svc, job, output.results, paths, output.endpoint_seconds) if output.state == "done" else []
    failpoint("results_written")
    ok = svc.store.finish_job(job_id, svc.owner, state=output.state, outcome=output.outcome,
                               new_results=rows, destinations=rule.send_to if rows else (),
                               endpoint_seconds=output.endpoint_seconds,
                               writes=[*output.writes, *observed],  # observed: node/monitoring
                               result_kinds=_result_kinds(svc, rule.send_to))
    if not ok:
        log.warning("job %d: lease lost before the results were committed; another worker owns it", job_id)
        return
    _count(svc, job, output.state)
    log.info("job %d (study %s, rule %s) %s in %.2f s: %s", job_id, job["study_uid"], rule.name, output.state,
             time.monotonic() - t0, output.outcome)
    circuit.succeeded(svc, job["endpoint"])
    if rows:
        for dest in rule.send_to:
            svc.queue.enqueue_delivery(dest)
    _after_job(svc, job["study_uid"])


def _result_kinds(svc: Services, send_to: list[str]) -> dict[str, list[str]]:
    """Destination -> the result kinds it receives (``destinations.<name>.results``)."""
    return {d: list(svc.cfg.destinations[d].results) for d in send_to if d in svc.cfg.destinations}


def _endpoint_failed(svc: Services, job: dict[str, Any], exc: EndpointError) -> None:
    """A call of ``job`` failed: act on its cause (:func:`node.flow.circuit.verdict`), never the status alone.

    The model refused this input (424, inner 4xx): the job fails at once with the model's reason (``status``, the
    study page, ``dicom_node_model_errors``, a ``job-failed`` audit event) and the backlog behind it runs on. The
    model failed on it (424, inner 5xx) or ran past ``request_timeout_ms`` (408): that job only is tried again, at
    most ``model_error_retries`` times. Anything that says the endpoint is down opens its circuit.
    """
    endpoint = svc.cfg.endpoints[job["endpoint"]]
    verdict = circuit.verdict(svc, job, exc)
    if exc.cause in ("model-input", *circuit.PER_JOB_CAUSES):
        metrics.model_error(job["endpoint"], exc.cause, exc.model_status or exc.status,
                            {"fail": "failed", "retry-job": "retried"}.get(verdict, "endpoint"))
    if exc.cause == "timeout":
        _alert_timeout(svc, job, exc, verdict)
    if verdict == "endpoint":
        _count(svc, job, "retry")
        _retry_later(svc, job, endpoint.give_up_after_seconds, exc)
        return
    if verdict == "retry-job":
        _count(svc, job, "retry")
        _retry_job(svc, job, endpoint.model_error_retries, exc)
        if exc.status is not None:  # the endpoint answered: it is up, whatever it made of this input
            circuit.succeeded(svc, job["endpoint"])
        return
    why = circuit.failure_outcome(exc)  # names the cause: the status page's endpoint health reads it back
    if exc.cause in circuit.PER_JOB_CAUSES:
        why = circuit.failure_outcome(exc, f", {job['attempts']} tries (model_error_retries "
                                           f"{endpoint.model_error_retries})")
    svc.store.finish_job(job["id"], svc.owner, state="failed", outcome=why)
    _count(svc, job, "failed")
    log.error("job %d (study %s) failed: %s", job["id"], job["study_uid"], why)
    _audit_job(svc, job, "job-failed", "serious-failure", reason=why, cause=exc.cause,
               model_status=exc.model_status)
    if exc.status is not None:  # the endpoint answered: it is up, whatever it thought of this request
        circuit.succeeded(svc, job["endpoint"])
    _after_job(svc, job["study_uid"])


def _retry_job(svc: Services, job: dict[str, Any], retries: int, exc: EndpointError) -> None:
    """Try this job again later (its own backoff; the endpoint's circuit stays as it is)."""
    endpoint = svc.cfg.endpoints[job["endpoint"]]
    delay = max(circuit.retry_delay(int(job["attempts"]), endpoint), exc.retry_after or 0.0)
    when = time.strftime("%H:%M:%S", time.localtime(time.time() + delay))
    outcome = f"will retry at {when} (try {int(job['attempts']) + 1} of {retries + 1}): {exc}"
    if svc.store.release_job(job["id"], svc.owner, retry_in=delay, give_up_in=endpoint.give_up_after_seconds,
                             outcome=outcome):
        log.warning("job %d (study %s) %s", job["id"], job["study_uid"], outcome)
        svc.queue.enqueue_job(job["id"], delay=delay)


def _alert_timeout(svc: Services, job: dict[str, Any], exc: EndpointError, verdict: str) -> None:
    """A 408: the deployment's ``request_timeout_ms`` is shorter than this model needs for this input."""
    from node.invoke.deployments import lookup

    cfg = svc.cfg.endpoints[job["endpoint"]]
    known = lookup(cfg)
    dep = known.serving(cfg.deployment) if known is not None and known.error is None else None
    setting = (f"request_timeout_ms {dep.request_timeout_ms} of deployment {dep.name}"
               if dep is not None and dep.request_timeout_ms else "request_timeout_ms")
    then = {"fail": "the job failed", "retry-job": "the job will be tried again",
            "endpoint": "several studies timed out: the endpoint's circuit opens"}[verdict]
    log.error("ALERT: endpoint %s: the model ran longer than the deployment's %s on study %s (job %d); %s. "
              "Raise it in the deployment's request_settings (Microsoft's samples deploy with 90000 ms, 180000 ms "
              "for 3D; the API default is 5000 ms; managed endpoints allow 180000 ms at most)", job["endpoint"],
              setting, job["study_uid"], job["id"], then)


def _retry_later(svc: Services, job: dict[str, Any], give_up_after: float, exc: EndpointError) -> None:
    """A transient endpoint failure: open the endpoint's circuit and wait for it, or park past the horizon."""
    row = circuit.failed(svc, job, exc)
    t = time.time()
    give_up_at = job["give_up_at"] if job["give_up_at"] is not None else t + give_up_after
    if t >= give_up_at:
        _park(svc, job, f"endpoint {job['endpoint']} still failing {give_up_after:g} s (give_up_after_seconds) "
                        f"after the job's first failure: {exc}")
        circuit.schedule_probe(svc, job["endpoint"], row["retry_at"])  # the rest of the backlog still waits on it
        return
    when = time.strftime("%H:%M:%S", time.localtime(row["retry_at"]))
    if svc.store.release_job(job["id"], svc.owner, retry_in=row["retry_at"] - t, give_up_in=give_up_after,
                             outcome=f"will retry at {when} (endpoint unavailable): {exc}"):
        log.warning("job %d (study %s) will be retried at %s: %s", job["id"], job["study_uid"], when, exc)
        circuit.schedule_probe(svc, job["endpoint"], row["retry_at"])


def _wait_for_endpoint(svc: Services, job: dict[str, Any], give_up_after: float, row: dict[str, Any]) -> None:
    """The endpoint's circuit is open: release the job uncounted (the probe's success runs it), or park it."""
    t = time.time()
    if job["give_up_at"] is not None and t >= job["give_up_at"]:
        _park(svc, job, f"endpoint {job['endpoint']} unavailable for longer than give_up_after_seconds "
                        f"({give_up_after:g} s): {row['reason']}")
        return
    svc.store.release_job(job["id"], svc.owner, retry_in=max(0.0, row["retry_at"] - t), give_up_in=give_up_after,
                          counted=False, outcome=f"waiting for endpoint {job['endpoint']} (unavailable since "
                          f"{time.strftime('%H:%M:%S', time.localtime(row['opened_at']))}): {row['reason']}")


def _park(svc: Services, job: dict[str, Any], why: str) -> None:
    """Park a job: kept with its study, shown in ``dicom-node status``, run again by ``dicom-node retry --jobs``."""
    if not svc.store.finish_job(job["id"], svc.owner, state="parked", outcome=why):
        return
    log.error("ALERT: job %d (study %s, rule %s) parked: %s; `dicom-node retry --jobs` runs it again",
              job["id"], job["study_uid"], job["rule_name"], why)
    _audit_job(svc, job, "job-parked", "serious-failure", reason=why)


def _count(svc: Services, job: dict[str, Any], outcome: str) -> None:
    """Count a job outcome (or a retry) in the metrics, by model and rule."""
    endpoint = svc.cfg.endpoints.get(job["endpoint"])
    metrics.job_finished(endpoint.model if endpoint else "unknown", job["rule_name"], outcome)


def _labels(svc: Services, study_uid: str) -> dict[str, dict[str, str]]:
    return study_labels(svc.store.engine, study_uid)


def _after_job(svc: Services, study_uid: str) -> None:
    """Rules with `classified:` waiting on this study may be decided now (node/flow/decide.py)."""
    try:
        resolve_waiting(svc, study_uid)
    except Exception:  # the sweep tries again
        log.exception("study %s: resolving classified rules failed", study_uid)


def _audit_job(svc: Services, job: dict[str, Any], event: str, outcome: str = "success", **fields: Any) -> None:
    """Audit what a job sent to which endpoint (study and series UIDs, the endpoint's host)."""
    endpoint = svc.cfg.endpoints.get(job["endpoint"])
    host = urlsplit(endpoint.url).hostname if endpoint is not None and endpoint.url else None
    audit_log(svc.cfg).record(event, outcome, job_id=job["id"], rule=job["rule_name"], endpoint=job["endpoint"],
                               endpoint_host=host, study_uid=job["study_uid"],
                               series_uids=json.loads(job["series_uids"]), **fields)


def _prior_lookup(svc: Services) -> Callable[[pydicom.Dataset], Any] | None:
    """The prior lookup of node/models/cxrreportgen/priors.py, when the configuration asks for priors."""
    if svc.cfg.priors is None or not svc.cfg.priors.enabled:
        return None
    return PriorFetcher(svc.cfg, svc.store, svc.spool).fetch


def _previous(svc: Services, job: dict[str, Any], kind: str) -> pydicom.Dataset | None:
    prev = svc.store.previous_result(job["study_uid"], job["rule_name"], job["study_version"], kind)
    if prev is None:
        return None
    try:
        return pydicom.dcmread(prev["path"])
    except OSError:
        return None
