"""Endpoint outages: one circuit per endpoint, so a backlog waits on the endpoint once instead of once per job.

Policy over :mod:`node.store.circuits` (the state is in the database: every worker thread and a restarted worker
see it; nothing is lost with a process):

* **closed** (no row): jobs call the endpoint.
* Errors are acted on by cause (:attr:`node.invoke.errors.EndpointError.cause`, :func:`verdict`), not by status:
  a 424 whose inner status is 4xx (the model refused *this input*) fails that job at once; a 424 with an inner 5xx
  and a 408 (the deployment's ``request_timeout_ms``) are tried again for that job only, at most
  ``model_error_retries`` times, and never open the circuit, except 408s of :data:`TIMEOUT_STUDIES` different
  studies within :data:`TIMEOUT_WINDOW_SECONDS` (the endpoint itself is too slow).
* An endpoint-level failure after the HTTP client's own retries (network error, read timeout, 429, 5xx, repeated
  408s) **opens** the circuit until the endpoint's ``Retry-After`` when it sent one (any length), else a jittered
  exponential backoff (``retry_initial_seconds`` doubling per consecutive failure, capped at
  ``retry_max_seconds``). Jobs that find it open call nothing: they wait, pending, without counting an attempt.
* When it is due, the oldest waiting job is the **probe** (half-open): the only job that calls. Its success
  closes the circuit and the backlog drains, urgent rules first then oldest first, at the endpoint's
  ``max_concurrency`` (the client's limit); its failure opens the circuit again with a longer wait.
* A job retries until ``give_up_after_seconds`` after its first failure, then it is **parked** with the reason
  (``dicom-node status``, an ``ALERT`` in the log, a ``job-parked`` audit event) and kept until
  ``dicom-node retry --jobs`` runs it again.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from node.config import EndpointSection
from node.invoke.client import EndpointError

if TYPE_CHECKING:  # pragma: no cover
    from node.flow.services import Services

log = logging.getLogger(__name__)


def retry_delay(failures: int, endpoint: EndpointSection) -> float:
    """Seconds before the next probe after ``failures`` consecutive failures: uniform(0.5, 1) x initial x 2^(n-1),
    capped at ``retry_max_seconds``."""
    base = min(endpoint.retry_max_seconds, endpoint.retry_initial_seconds * (2 ** max(0, failures - 1)))
    return base * random.uniform(0.5, 1.0)


#: 408s of this many different studies on one endpoint within :data:`TIMEOUT_WINDOW_SECONDS` open its circuit.
TIMEOUT_STUDIES = 3
TIMEOUT_WINDOW_SECONDS = 600.0
#: Causes of a failed call that are about one input, not the endpoint: never counted against its circuit alone.
PER_JOB_CAUSES = ("model-error", "timeout")

#: Causes that say the endpoint answered and this input was the trouble: never held against the endpoint's health.
INPUT_CAUSES = ("model-input", *PER_JOB_CAUSES)
#: How a job's outcome names the cause of a failed endpoint call (``node/flow/run.py`` writes it, the status page's
#: endpoint health reads it back): "endpoint error (model-input): ...".
_OUTCOME_CAUSE = re.compile(r"^endpoint error \((?P<cause>[a-z-]+)\)")

_timeouts_lock = threading.Lock()
_timeouts: dict[str, deque[tuple[float, str]]] = {}


def timed_out_studies(endpoint: str, study_uid: str, now: float | None = None) -> int:
    """Record a 408 of ``study_uid`` on ``endpoint``; the different studies that timed out there within the window
    (this worker process's memory: a restart starts counting again)."""
    t = time.time() if now is None else now
    with _timeouts_lock:
        seen = _timeouts.setdefault(endpoint, deque(maxlen=256))
        seen.append((t, study_uid))
        return len({uid for when, uid in seen if t - when <= TIMEOUT_WINDOW_SECONDS})


def says_endpoint_down(exc: EndpointError) -> bool:
    """A failure that says the endpoint (not this request) is unavailable: a transient one, once the HTTP client's
    own retries are spent, that is not about one input (a 424 or a 408)."""
    return not exc.permanent and exc.cause not in PER_JOB_CAUSES


def verdict(svc: "Services", job: dict[str, Any], exc: EndpointError) -> str:
    """What a failed call means for ``job`` (whose ``attempts`` counts this one): ``"fail"`` (at once, or its
    ``model_error_retries`` are spent), ``"retry-job"`` (that job again later, the circuit untouched) or
    ``"endpoint"`` (the endpoint is down or too slow: open its circuit)."""
    if exc.cause == "model-input":  # the model refused this input: the same input is refused again
        return "fail"
    if exc.cause in PER_JOB_CAUSES:
        endpoint = svc.cfg.endpoints[job["endpoint"]]
        spent = int(job["attempts"]) > endpoint.model_error_retries
        if exc.cause == "timeout" and timed_out_studies(job["endpoint"], job["study_uid"]) >= TIMEOUT_STUDIES:
            return "fail" if spent else "endpoint"
        return "fail" if spent else "retry-job"
    return "endpoint" if says_endpoint_down(exc) else "fail"


def failure_outcome(exc: EndpointError, detail: str = "") -> str:
    """The outcome of a job a failed call ended: ``endpoint error (<cause>)<detail>: <message>``."""
    return f"endpoint error ({exc.cause}){detail}: {exc}"


def fault_of(state: str, outcome: str | None) -> str | None:
    """Whose fault a job's last outcome says it is, for the endpoint's health: ``"endpoint"`` (parked after the
    endpoint failed past ``give_up_after_seconds``, or failed on an endpoint-level cause: auth, a request the
    gateway refused, an unreadable reply, the configuration), ``"answered"`` (done, or the endpoint answered and
    this input was refused or failed: a 424, a 408, :data:`INPUT_CAUSES`) or None (nothing about the endpoint: the
    job failed before or after its call, or is waiting)."""
    if state == "done":
        return "answered"
    if state == "parked":
        return "endpoint"
    if state != "failed" or not outcome:
        return None
    found = _OUTCOME_CAUSE.match(outcome)
    if found is None:
        return None
    return "answered" if found.group("cause") in INPUT_CAUSES else "endpoint"


def admit(svc: "Services", job: dict[str, Any]) -> dict[str, Any] | None:
    """None when ``job`` may call its endpoint now (closed, or it is the probe); else the open circuit's row."""
    verdict, row = svc.store.circuit_admit(job["endpoint"], job["id"])
    if verdict == "probe":
        log.info("endpoint %s: job %d probes whether it is back (circuit half-open)", job["endpoint"], job["id"])
    return row if verdict == "wait" else None


def failed(svc: "Services", job: dict[str, Any], exc: EndpointError) -> dict[str, Any]:
    """Record the failed call of ``job`` on its endpoint's circuit; schedule the probe; returns the circuit row."""
    endpoint = svc.cfg.endpoints[job["endpoint"]]
    was_open = svc.store.circuit(job["endpoint"]) is not None
    row = svc.store.circuit_failed(job["endpoint"], job["id"], delay_for=lambda n: retry_delay(n, endpoint),
                                   retry_after=exc.retry_after, reason=exc.message[:300])
    if not was_open:
        log.error("ALERT: endpoint %s unavailable, its jobs wait (circuit open) until %s: %s", job["endpoint"],
                  _clock(row["retry_at"]), exc.message[:300])
    return row


def schedule_probe(svc: "Services", endpoint: str, at: float) -> None:
    """Enqueue the first job of ``endpoint``'s backlog at ``at`` (epoch seconds): it will be the probe."""
    backlog = svc.store.endpoint_backlog(endpoint, _urgent_rules(svc))
    if backlog:
        svc.queue.enqueue_job(backlog[0], delay=max(0.0, at - time.time()))


def succeeded(svc: "Services", endpoint: str) -> None:
    """The endpoint answered: close its circuit; when it was open, drain its backlog in order."""
    if svc.store.circuit(endpoint) is None or not svc.store.circuit_succeeded(endpoint):
        return  # closed already (the common case costs one read)
    backlog = svc.store.endpoint_backlog(endpoint, _urgent_rules(svc))
    log.warning("endpoint %s is back (circuit closed): running its %d waiting job(s)", endpoint, len(backlog))
    for job_id in backlog:
        svc.queue.enqueue_job(job_id)


def due_probes(svc: "Services") -> None:
    """The sweep: schedule a probe for every circuit due one with none running (the last probe's worker died)."""
    for endpoint in svc.store.circuits_due_probe():
        schedule_probe(svc, endpoint, 0.0)


def _urgent_rules(svc: "Services") -> list[str]:
    return [r.name for r in svc.cfg.rules if r.priority == "urgent"]


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
