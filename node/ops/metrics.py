"""Every Prometheus metric the node's processes record, and one small call per natural point to record it.

Receivers, the SCP and the worker are separate processes: under ``serve`` each writes its samples to the folder
named by ``PROMETHEUS_MULTIPROC_DIR`` (:mod:`node.ops.metricsdir`) and the HTTP side sums them at scrape time,
so a counter keeps what a worker counted after that worker was restarted. State (outbox depth, parked results,
free disk, queue lag) is not counted here: the HTTP side reads it from the database and the spool at scrape time
(:mod:`node.http.collector`). Labels are bounded: AE titles the node accepted, SOP class names, rule, model,
endpoint and destination names from the configuration, status codes.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Histogram

# Model calls take seconds; a chest X-ray report up to a minute, a CT volume up to the 180 s limit.
ENDPOINT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, float("inf"))
# Last instance received -> result stored at the destination: the quiet timer plus the job plus the send.
DELIVERY_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600, float("inf"))

ASSOCIATIONS = Counter("dicom_node_associations", "DICOM associations requested, by calling AE title and result",
                       ["calling_ae", "result"])
INSTANCES = Counter("dicom_node_instances_received", "Instances stored durably (C-STORE success)",
                    ["calling_ae", "sop_class"])
RECEIVED_BYTES = Counter("dicom_node_received_bytes", "Bytes of the instances stored durably",
                         ["calling_ae", "sop_class"])
CSTORE_RESPONSES = Counter("dicom_node_cstore_responses", "C-STORE statuses the SCP returned (hex)", ["status"])
QUARANTINED = Counter("dicom_node_quarantined", "Instances quarantined, by reason", ["reason"])
STUDIES_COMPLETED = Counter("dicom_node_studies_completed", "Studies found complete (by any trigger) and decided")
# Last instance received -> study decided: ~0 for an MPPS/IAN/expected content, the quiet time for the timer.
DECISION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 900, 1800, 3600, float("inf"))
DECISIONS = Counter("dicom_node_study_decisions", "Study decisions by the trigger that fired (mpps, ian, expected, "
                    "timer, max_wait, ups)", ["trigger"])
DECISION_SECONDS = Histogram("dicom_node_decision_latency_seconds",
                             "The study's last instance received -> the study decided, by trigger", ["trigger"],
                             buckets=DECISION_BUCKETS)
WORKFLOW_MESSAGES = Counter("dicom_node_workflow_messages", "MPPS and IAN messages the SCP answered, by status (hex)",
                            ["message", "status"])
WORKITEMS = Counter("dicom_node_workitems", "UPS-RS workitems by what the performer did (claimed, lost, completed, "
                    "canceled)", ["source", "event"])
JOBS = Counter("dicom_node_jobs", "Jobs finished, by model, rule and outcome (done, skipped, failed, retry)",
               ["model", "rule", "outcome"])
ENDPOINT_SECONDS = Histogram("dicom_node_endpoint_request_seconds", "Duration of one HTTP call to a model endpoint",
                             ["endpoint"], buckets=ENDPOINT_BUCKETS)
ENDPOINT_RESPONSES = Counter("dicom_node_endpoint_responses", "Endpoint calls by HTTP status (or network error)",
                             ["endpoint", "code"])
MODEL_ERRORS = Counter("dicom_node_model_errors", "Calls the model itself failed or refused (424 with the container's "
                       "status, 408), by endpoint, cause, status and what the job did", ["endpoint", "cause", "status",
                                                                                         "action"])
RETRIES = Counter("dicom_node_retries", "Retries: endpoint calls, whole jobs, sends to a destination",
                  ["kind", "target"])
SENDS = Counter("dicom_node_sends", "Results sent to a destination, by status and what the outbox did",
                ["destination", "status", "verdict"])
DELIVERY_SECONDS = Histogram("dicom_node_result_delivery_seconds",
                             "Last instance of the study received -> result delivered to the destination",
                             ["destination"], buckets=DELIVERY_BUCKETS)


@lru_cache(maxsize=512)
def sop_class_name(uid: str) -> str:
    """'CT Image Storage' for a known SOP class UID, the UID itself otherwise (bounded by what senders use)."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else "unknown"
    return name or uid


def association(calling_ae: str, accepted: bool) -> None:
    """One association request answered."""
    ASSOCIATIONS.labels(calling_ae, "accepted" if accepted else "rejected").inc()


def instance_stored(calling_ae: str, sop_class_uid: str, size: int) -> None:
    """One instance made durable and acknowledged."""
    name = sop_class_name(sop_class_uid)
    INSTANCES.labels(calling_ae, name).inc()
    RECEIVED_BYTES.labels(calling_ae, name).inc(size)


def cstore_status(status: int) -> None:
    """The status the SCP answered one C-STORE with."""
    CSTORE_RESPONSES.labels(f"0x{status:04X}").inc()


def quarantined(reason: str) -> None:
    """One instance quarantined; ``reason`` is a short fixed word (unparseable, invalid-uid, uid-mismatch)."""
    QUARANTINED.labels(reason).inc()


def study_completed() -> None:
    """One study decided (whichever trigger fired)."""
    STUDIES_COMPLETED.inc()


def study_decided(trigger: str, since_last_instance: float | None) -> None:
    """One study version decided by ``trigger``, ``since_last_instance`` seconds after its last instance."""
    DECISIONS.labels(trigger).inc()
    if since_last_instance is not None:
        DECISION_SECONDS.labels(trigger).observe(max(0.0, since_last_instance))


def workflow_message(message: str, status: int) -> None:
    """One MPPS N-CREATE / N-SET or IAN answered with ``status``."""
    WORKFLOW_MESSAGES.labels(message, f"0x{status:04X}").inc()


def workitem(source: str, event: str) -> None:
    """The UPS performer claimed, lost, completed or canceled a workitem of ``source``."""
    WORKITEMS.labels(source, event).inc()


def job_finished(model: str, rule: str, outcome: str) -> None:
    """One job settled: done, skipped, failed, or released to be retried (retry)."""
    JOBS.labels(model, rule, outcome).inc()
    if outcome == "retry":
        RETRIES.labels("job", rule).inc()


def endpoint_call(endpoint: str, code: int | str, seconds: float) -> None:
    """One HTTP call to a model endpoint: its status code (or 'error' without an answer) and duration."""
    ENDPOINT_RESPONSES.labels(endpoint, str(code)).inc()
    ENDPOINT_SECONDS.labels(endpoint).observe(seconds)


def model_error(endpoint: str, cause: str, status: int | str | None, action: str) -> None:
    """A job met a model error: ``cause`` model-input / model-error / timeout, ``status`` the container's status
    (408 for a timeout), ``action`` failed / retried / endpoint (the endpoint's circuit opened)."""
    MODEL_ERRORS.labels(endpoint, cause, str(status if status is not None else "-"), action).inc()


def endpoint_retry(endpoint: str) -> None:
    """The HTTP client will call ``endpoint`` again after a failed attempt."""
    RETRIES.labels("endpoint", endpoint).inc()


def sent(destination: str, status: str | None, verdict: str, since_last_instance: float | None) -> None:
    """One outbox row settled after a send; ``since_last_instance`` when it was delivered."""
    SENDS.labels(destination, status or "none", verdict).inc()
    if verdict == "retry":
        RETRIES.labels("delivery", destination).inc()
    if since_last_instance is not None:
        DELIVERY_SECONDS.labels(destination).observe(max(0.0, since_last_instance))


#: The names of the metrics above (without the ``_total`` suffix), for the docs/operations.md and dashboard checks.
REGISTERED = {m._name for m in (ASSOCIATIONS, INSTANCES, RECEIVED_BYTES, CSTORE_RESPONSES, QUARANTINED,  # noqa: SLF001
                                STUDIES_COMPLETED, JOBS, ENDPOINT_SECONDS, ENDPOINT_RESPONSES, RETRIES, SENDS,
                                DELIVERY_SECONDS, DECISIONS, DECISION_SECONDS, WORKFLOW_MESSAGES, WORKITEMS)}
