"""The worker role: runs the queue's tasks (decide, convert/invoke/write, return) in its own process.

The SCP never waits for this process: conversion and model calls hold the GIL and the network for seconds,
so ``dicom-node serve`` runs them here, in a child process, as Huey consumer threads. The worker builds the
:class:`~node.flow.services.Services` once and binds each task body to it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from node.config import NodeConfig
from node.flow import decide, deliver, run, sweep
from node.flow.services import Services
from node.models import registry, versions
from node.ops.hardening import harden_process
from node.ops.process import die_with_parent, freeze_startup_heap
from node.store.compat import IncompatibleSchema

log = logging.getLogger(__name__)


def bind_tasks(svc: Services) -> None:
    """Give the queue of ``svc`` its task bodies, each bound to ``svc``."""
    svc.queue.bind({
        "check_study": functools.partial(decide.check_study, svc),
        "run_job": functools.partial(run.run_job, svc),
        "deliver": functools.partial(deliver.deliver, svc),
    })


def compatible(svc: Services) -> bool:
    """False once a newer node made the shared database unusable to this code (node.store.compat): from then on
    this worker dequeues nothing and sweeps nothing, so the nodes that can use the schema get every task.

    The guard reads the database at most every few seconds; a failed read is no verdict (the tasks meet the
    failure themselves and are retried as before).
    """
    try:
        svc.store.schema_guard.check()
    except IncompatibleSchema:
        return False
    except Exception:  # the database unreachable for a moment: not a reason to stop consuming
        return True
    return True


def sweep_every(svc: Services, interval: float, stop: threading.Event) -> threading.Thread:
    """Sweep for stale work every ``interval`` seconds on a daemon thread until ``stop`` is set.

    Huey's periodic tasks tick once a minute at most; a node of a cluster takes over the work of a dead one
    (expired leases, quiet studies whose timer died with it) only when a sweep runs, so the fail-over time is
    about ``queue.lease_seconds`` + this interval (``queue.sweep_seconds``, default a quarter lease).
    """
    def loop() -> None:
        while not stop.wait(interval):
            if not compatible(svc):
                continue  # the upgraded nodes sweep; this one only waits for its stop
            try:
                sweep.sweep(svc)
            except Exception:  # a database hiccup: the next sweep tries again
                log.exception("sweep failed; trying again in %.1f s", interval)

    thread = threading.Thread(target=loop, name="sweep", daemon=True)
    thread.start()
    return thread


def run_worker(cfg: NodeConfig, *, parent_pid: int | None = None) -> None:
    """Run the Huey consumer until SIGINT/SIGTERM (graceful: tasks in flight finish first).

    A stop asked for while the worker is still starting (before Huey installs its handlers) ends it at once.
    """
    try:  # until Huey sets its handlers, SIGINT raises KeyboardInterrupt (never ignored: node.cli.main)
        _run_worker(cfg, parent_pid)
    except KeyboardInterrupt:
        log.info("worker stopped while starting")


def _run_worker(cfg: NodeConfig, parent_pid: int | None) -> None:
    if parent_pid is not None:
        die_with_parent()
        if os.getppid() != parent_pid:
            return  # the parent died before prctl took effect
    harden_process(cfg.storage_dir)  # also when the worker runs on its own (`dicom-node worker`)
    svc = Services.open(cfg)
    versions.prefetch(cfg)  # workspace endpoints: the deployed model's version, read before the first job needs it
    # Import every model's pipeline now, in one thread: consumer threads importing two pipelines at once can
    # meet in a shared dependency's import lock (Python raises _DeadlockError in one of them).
    for spec in registry.MODELS.values():
        spec.load_pipeline()
    bind_tasks(svc)
    sweep.sweep(svc, fresh_start=True)  # resume at once what the previous run left (a job released at restart too)
    svc.queue.consume_only_while(functools.partial(compatible, svc))
    consumer = svc.queue.consumer(cfg.queue.workers)
    freeze_startup_heap()
    stop = threading.Event()
    sweep_every(svc, cfg.sweep_seconds, stop)
    log.info("worker started: %d threads, lease owner %s, sweep every %.1f s", cfg.queue.workers, svc.owner,
             cfg.sweep_seconds)
    try:
        consumer.run()
    finally:
        stop.set()
    log.info("worker stopped")
