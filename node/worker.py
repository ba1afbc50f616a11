"""The worker role: runs the queue's tasks (decide, convert/invoke/write, return) in its own process.

The SCP never waits for this process: conversion and model calls hold the GIL and the network for seconds,
so ``dicom-node serve`` runs them here, in a child process, as Huey consumer threads.
"""

from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from converters.scrub import without_burned_in

from .audit import audit_log
from .checks import mixed_patients_reason
from .config import NodeConfig
from .failpoints import failpoint
from .hardening import harden_process
from .outbox import deliver_due
from .pipelines import JobContext, pipeline_for
from .queue import Queue
from .rules import plan_study
from .spool import Spool, write_durably
from .state import Store, lease_owner

log = logging.getLogger(__name__)

JOB_MAX_ATTEMPTS = 3  # whole-job attempts after the HTTP client's own retries are exhausted


class Runtime:
    """The task bodies, bound to one configuration, database and queue."""

    def __init__(self, cfg: NodeConfig, store: Store | None = None, queue: Queue | None = None) -> None:
        self.cfg = cfg
        self.store = store or Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
        self.queue = queue or Queue(cfg)
        self.spool = Spool(cfg.storage_dir)
        self.owner = lease_owner(cfg.node.instance_id)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # Decide -------------------------------------------------------------------------------------------
    def check_study(self, study_uid: str) -> None:
        """Quiet-timer check: close the study when no instance came for the configured time, and plan jobs."""
        quiet = self.cfg.node.study_complete_after_seconds
        decision, value = self.store.begin_decision(study_uid, quiet)
        if decision == "wait":
            self.queue.schedule_check(study_uid, float(value) - time.time())
            return
        if decision != "complete":
            return
        version = int(value)
        headers = []
        for row in self.store.study_instances(study_uid):
            try:
                headers.append(pydicom.dcmread(row["path"], stop_before_pixels=True))
            except Exception as exc:  # the file was accepted once; a later read failure must not stop the study
                # pydicom's messages may quote element values: the type only
                log.warning("study %s: cannot read instance %s: %s", study_uid, row["sop_instance_uid"],
                            type(exc).__name__)
        plans = plan_study(self.cfg.rules, headers)
        from .classified import resolve_waiting, waiting_plans

        waiting = waiting_plans(self.cfg, headers)  # rules with `classified:` wait for the study's labels
        job_ids = self.store.create_jobs(study_uid, version, [(p.rule.name, p.rule.endpoint, p.series_uids)
                                                              for p in plans], waiting=waiting)
        log.info("study %s complete (version %d, %d instances): %d job(s) %s", study_uid, version, len(headers),
                 len(job_ids), [p.rule.name for p in plans])
        for job_id in job_ids:
            self.queue.enqueue_job(job_id)
        if waiting:
            resolve_waiting(self, study_uid)

    # Convert, invoke, write ---------------------------------------------------------------------------
    def client(self, name: str):
        with self._clients_lock:
            if name not in self._clients:
                from .invoke.client import EndpointClient

                self._clients[name] = EndpointClient(name, self.cfg.endpoints[name])
            return self._clients[name]

    def run_job(self, job_id: int) -> None:
        """Run one job under a lease; its results and outbox rows are committed together at the end."""
        from .invoke.client import EndpointError

        job = self.store.claim_job(job_id, self.owner, self.cfg.queue.lease_seconds)
        if job is None:
            return  # done already, or another worker holds it
        rule = next((r for r in self.cfg.rules if r.name == job["rule_name"]), None)
        if rule is None or job["endpoint"] not in self.cfg.endpoints:
            self.store.finish_job(job_id, self.owner, state="failed",
                                  outcome=f"rule {job['rule_name']!r} or its endpoint is no longer configured")
            return
        endpoint = self.cfg.endpoints[job["endpoint"]]
        series = set(json.loads(job["series_uids"]))
        paths = [Path(r["path"]) for r in self.store.study_instances(job["study_uid"]) if r["series_uid"] in series]
        mixed = mixed_patients_reason(paths)
        if mixed:  # nothing leaves: a study mixing patients is an identification error upstream
            self.store.finish_job(job_id, self.owner, state="failed", outcome=mixed)
            log.error("job %d (study %s) failed: %s", job_id, job["study_uid"], mixed)
            self._after_job(job["study_uid"])
            return
        paths, burned_note = without_burned_in(paths, rule.params)  # BurnedInAnnotation=YES images never leave
        if not paths:
            refusal = f"not sent: {burned_note}"
            self.store.finish_job(job_id, self.owner, state="skipped", outcome=refusal)
            log.info("job %d (study %s, rule %s) skipped: %s", job_id, job["study_uid"], rule.name, refusal)
            self._after_job(job["study_uid"])
            return
        ctx = JobContext(job=job, rule=rule, endpoint_name=job["endpoint"], endpoint=endpoint,
                         client=self.client(job["endpoint"]), instance_paths=paths,
                         previous_results=lambda kind: self._previous(job, kind),
                         classifications=self._labels(job["study_uid"]), store=self.store,
                         prior_lookup=self._prior_lookup(),
                         result_kinds=frozenset(k for kinds in self._result_kinds(rule.send_to).values()
                                                for k in kinds))
        t0 = time.monotonic()
        try:
            output = pipeline_for(endpoint.model)(ctx)
            if burned_note:
                output.outcome = f"{output.outcome}; {burned_note}"
        except EndpointError as exc:
            if exc.permanent or job["attempts"] >= JOB_MAX_ATTEMPTS:
                self.store.finish_job(job_id, self.owner, state="failed", outcome=f"endpoint error: {exc}")
                log.error("job %d (study %s) failed: endpoint error: %s", job_id, job["study_uid"], exc)
                self._audit_job(job, "job-failed", "serious-failure", reason=f"endpoint error: {exc}")
                self._after_job(job["study_uid"])
            else:
                delay = 30.0 * job["attempts"]
                self.store.release_job(job_id, self.owner, retry_in=delay, outcome=f"will retry: {exc}")
                self.queue.enqueue_job(job_id, delay=delay)
                log.warning("job %d (study %s) will be retried in %.0f s: %s", job_id, job["study_uid"], delay, exc)
            return
        except Exception as exc:
            # Exception messages may quote header values (PHI): the type at ERROR, the traceback at DEBUG only.
            log.error("job %d (study %s) failed: %s (details in `dicom-node status`)", job_id, job["study_uid"],
                      type(exc).__name__)
            log.debug("job %d traceback", job_id, exc_info=True)
            self.store.finish_job(job_id, self.owner, state="failed", outcome=f"{type(exc).__name__}: {exc}")
            self._audit_job(job, "job-failed", "serious-failure", reason=type(exc).__name__)
            self._after_job(job["study_uid"])
            return
        if output.state == "done":  # a skipped job sent nothing
            self._audit_job(job, "model-request", result=output.outcome)
        rows = []
        for kind, ds in output.results:
            path = self.spool.result_path(job["study_uid"], str(ds.SOPInstanceUID))
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            write_durably(path, buf.getvalue())
            rows.append({"sop_instance_uid": str(ds.SOPInstanceUID), "study_uid": job["study_uid"],
                         "series_uid": str(ds.SeriesInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                         "kind": kind, "path": str(path)})
        failpoint("results_written")
        ok = self.store.finish_job(job_id, self.owner, state=output.state, outcome=output.outcome,
                                   new_results=rows, destinations=rule.send_to if rows else (),
                                   endpoint_seconds=output.endpoint_seconds, writes=output.writes,
                                   result_kinds=self._result_kinds(rule.send_to))
        if not ok:
            log.warning("job %d: lease lost before the results were committed; another worker owns it", job_id)
            return
        log.info("job %d (study %s, rule %s) %s in %.2f s: %s", job_id, job["study_uid"], rule.name, output.state,
                 time.monotonic() - t0, output.outcome)
        if rows:
            for dest in rule.send_to:
                self.queue.enqueue_delivery(dest)
        self._after_job(job["study_uid"])

    def _result_kinds(self, send_to: list[str]) -> dict[str, list[str]]:
        """Destination -> the result kinds it receives (``destinations.<name>.results``)."""
        return {d: list(self.cfg.destinations[d].results) for d in send_to if d in self.cfg.destinations}

    def _labels(self, study_uid: str) -> dict[str, dict[str, str]]:
        from .embeddings import study_labels

        return study_labels(self.store.engine, study_uid)

    def _after_job(self, study_uid: str) -> None:
        """Rules with `classified:` waiting on this study may be decided now (node/classified.py)."""
        from .classified import resolve_waiting

        try:
            resolve_waiting(self, study_uid)
        except Exception:  # the sweep tries again
            log.exception("study %s: resolving classified rules failed", study_uid)

    def _audit_job(self, job: dict[str, Any], event: str, outcome: str = "success", **fields: Any) -> None:
        """Audit what a job sent to which endpoint (study and series UIDs, the endpoint's host)."""
        from urllib.parse import urlsplit

        endpoint = self.cfg.endpoints.get(job["endpoint"])
        host = urlsplit(endpoint.url).hostname if endpoint is not None and endpoint.url else None
        audit_log(self.cfg).record(event, outcome, job_id=job["id"], rule=job["rule_name"], endpoint=job["endpoint"],
                                   endpoint_host=host, study_uid=job["study_uid"],
                                   series_uids=json.loads(job["series_uids"]), **fields)

    def _prior_lookup(self):
        """The prior lookup of node/priors.py, when the configuration asks for priors."""
        if self.cfg.priors is None or not self.cfg.priors.enabled:
            return None
        from .priors import PriorFetcher

        return PriorFetcher(self.cfg, self.store, self.spool).fetch

    def _previous(self, job: dict[str, Any], kind: str) -> pydicom.Dataset | None:
        prev = self.store.previous_result(job["study_uid"], job["rule_name"], job["study_version"], kind)
        if prev is None:
            return None
        try:
            return pydicom.dcmread(prev["path"])
        except OSError:
            return None

    # Return -------------------------------------------------------------------------------------------
    def deliver(self, destination: str) -> None:
        """Send what is due for ``destination``; schedule the next attempt of what must wait."""
        report = deliver_due(self.store, self.cfg, destination, self.owner)
        if report.more_due:
            self.queue.enqueue_delivery(destination)
            return
        for dest, due in self.store.due_destinations():
            if dest == destination:
                self.queue.enqueue_delivery(destination, delay=max(0.0, due - time.time()))

    # Recovery -----------------------------------------------------------------------------------------
    def sweep(self, fresh_start: bool = False) -> None:
        """Re-enqueue what a crash or a lost task left behind. Every task it enqueues is idempotent."""
        stale = self.store.stale_work(self.cfg.node.study_complete_after_seconds, fresh_start=fresh_start)
        for study_uid in stale["studies"]:
            self.queue.check_study(study_uid)
        if fresh_start:
            # Quiet timers live in memory (node.timers): re-arm those a dead process took with it.
            for study_uid, due in self.store.receiving_not_due(self.cfg.node.study_complete_after_seconds):
                self.queue.schedule_check(study_uid, due - time.time())
        for job_id in stale["jobs"]:
            self.queue.enqueue_job(job_id)
        for dest in stale["destinations"]:
            self.queue.enqueue_delivery(dest)
        from .classified import resolve_all

        resolve_all(self)
        purged = self.store.purge_delivered(self.cfg.retention.purge_delivered_after_hours * 3600.0)
        if any(stale.values()) or purged:
            log.info("sweep: re-enqueued %d studies, %d jobs, %d destinations; purged %d studies",
                     len(stale["studies"]), len(stale["jobs"]), len(stale["destinations"]), purged)


_RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    if _RUNTIME is None:
        raise RuntimeError("the worker runtime is not initialised (run through `dicom-node worker`)")
    return _RUNTIME


def init_runtime(cfg: NodeConfig) -> Runtime:
    global _RUNTIME
    _RUNTIME = Runtime(cfg)
    return _RUNTIME


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (``serve``) dies, so no orphan keeps working."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_worker(cfg: NodeConfig, *, parent_pid: int | None = None) -> None:
    """Run the Huey consumer until SIGINT/SIGTERM (graceful: tasks in flight finish first)."""
    if parent_pid is not None:
        _die_with_parent()
        if os.getppid() != parent_pid:
            return  # the parent died before prctl took effect
    harden_process(cfg.storage_dir)  # also when the worker runs on its own (`dicom-node worker`)
    rt = init_runtime(cfg)
    rt.sweep(fresh_start=True)  # resume at once what the previous run left (a job released at restart too)
    consumer = rt.queue.consumer(cfg.queue.workers)
    log.info("worker started: %d threads, lease owner %s", cfg.queue.workers, rt.owner)
    consumer.run()
