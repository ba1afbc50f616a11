"""Endpoint outages: one circuit per endpoint, so a backlog waits on the endpoint once instead of once per job.

Policy over :mod:`node.store.circuits` (the state is in the database: every worker thread and a restarted worker
see it; nothing is lost with a process):

* **closed** (no row): jobs call the endpoint.
* A call that fails after the HTTP client's own retries (network error, timeout, 408, 424, 429, 5xx: the
  endpoint is down or throttled) **opens** the circuit until the endpoint's ``Retry-After`` when it sent one (any
  length), else a jittered exponential backoff (``retry_initial_seconds`` doubling per consecutive failure, capped
  at ``retry_max_seconds``). Jobs that find it open call nothing: they wait, pending, without counting an attempt.
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
import time
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


def says_endpoint_down(exc: EndpointError) -> bool:
    """A failure that says the endpoint (not this request) is unavailable: every transient one, once the HTTP
    client's own retries are spent."""
    return not exc.permanent


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
