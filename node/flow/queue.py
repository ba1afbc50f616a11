"""The work queue: Huey, embedded on SQLite by default, on Redis when ``queue.url`` says so.

Huey delivers a task at most once (it leaves the queue before it runs), so tasks only carry ids: the
database holds the truth (leases, attempts, next_attempt_at) and the worker's sweep re-enqueues whatever a
crash dropped. Every task is idempotent.

This module only names and registers the tasks, so that the SCP process (which enqueues) and the worker process
(which runs) agree on the names without the SCP importing the conversion and model code. The worker hands the
task bodies, bound to their dependencies, to :meth:`Queue.bind` (:mod:`node.flow.worker`); no global runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

from huey import Huey, RedisHuey, SqliteHuey

from node.config import ConfigError, NodeConfig
from node.store.compat import IncompatibleSchema

log = logging.getLogger(__name__)

QUEUE_NAME = "dicom-node"
TASK_NAMES = ("check_study", "run_job", "deliver")


def make_huey(cfg: NodeConfig) -> Huey:
    """The Huey instance for ``cfg.queue_url`` (results are not stored: the database is the record)."""
    url = cfg.queue_url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(QUEUE_NAME, filename=str(path), results=False, fsync=True, timeout=30)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(QUEUE_NAME, url=url, results=False)
    raise ConfigError(f"queue.url: {url!r} is not supported; allowed: sqlite:///PATH or redis://HOST:PORT/DB")


class Queue:
    """The node's tasks on one Huey instance: ``check_study``, ``run_job``, ``deliver``.

    The sweep is not a task: the worker runs it on its own thread every ``queue.sweep_seconds``
    (:func:`node.flow.worker.sweep_every`), more often than Huey's once-a-minute periodic tasks could.
    """

    def __init__(self, cfg: NodeConfig) -> None:
        self.huey = make_huey(cfg)
        self._bodies: dict[str, Callable[..., Any]] = {}
        h = self.huey
        self.check_study = h.task(name="check_study")(self._dispatch("check_study"))
        self.run_job = h.task(name="run_job")(self._dispatch("run_job"))
        self.deliver = h.task(name="deliver")(self._dispatch("deliver"))

    def bind(self, bodies: Mapping[str, Callable[..., Any]]) -> None:
        """Give the task bodies (one per name of :data:`TASK_NAMES`) to the process that runs the consumer."""
        missing = set(TASK_NAMES) - set(bodies)
        if missing:
            raise ValueError(f"task bodies missing: {sorted(missing)}")
        self._bodies = dict(bodies)

    def _dispatch(self, name: str) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            body = self._bodies.get(name)
            if body is None:
                raise RuntimeError(f"task {name!r} ran in a process without task bodies (run `dicom-node worker`)")
            try:
                return body(*args)
            except IncompatibleSchema:
                # A newer node upgraded the shared database past this code (node.store.compat): every store write
                # refuses before it changes anything, so the task is handed back untouched for a node that can
                # do it; this worker takes no more (see consume_only_while).
                getattr(self, name)(*args)
                log.warning("task %s%r handed back to the queue: this node's schema is out of date", name, args)
                return None

        run.__name__ = name
        return run

    def consume_only_while(self, allowed: Callable[[], bool]) -> None:
        """Dequeue nothing while ``allowed()`` is False: the tasks stay in the queue for the other nodes.

        Huey has no hook before a dequeue, so this wraps the instance's ``dequeue`` (what the consumer's worker
        threads call on every poll); an idle poll returns None, as on an empty queue.
        """
        dequeue = self.huey.dequeue

        def gated_dequeue() -> Any:
            return dequeue() if allowed() else None

        self.huey.dequeue = gated_dequeue  # type: ignore[method-assign]

    def enqueue_job(self, job_id: int, delay: float = 0.0) -> None:
        """Run job ``job_id`` now, or in ``delay`` seconds."""
        if delay > 0:
            self.run_job.schedule(args=(job_id,), delay=delay)
        else:
            self.run_job(job_id)

    def enqueue_delivery(self, destination: str, delay: float = 0.0) -> None:
        """Send what is due for ``destination`` now, or in ``delay`` seconds."""
        if delay > 0:
            self.deliver.schedule(args=(destination,), delay=delay)
        else:
            self.deliver(destination)

    def consumer(self, workers: int):
        """A Huey consumer tuned for low latency: idle workers poll every 0.01..0.05 s, not up to 10 s.

        Each hop of a study (check -> job -> delivery) waits for a poll; at 0.5 s that was up to 1.5 s per study.
        An idle poll is one read of the queue table per worker thread (about 80 small reads a second).
        """
        return self.huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                         initial_delay=0.01, backoff=1.5, max_delay=0.05,
                                         scheduler_interval=1, check_worker_health=True)
