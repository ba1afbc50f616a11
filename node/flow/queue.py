"""The work queue: Huey, embedded on SQLite by default, on Redis when ``queue.url`` says so.

Huey delivers a task at most once (it leaves the queue before it runs), so tasks only carry ids: the
database holds the truth (leases, attempts, next_attempt_at) and a periodic sweep re-enqueues whatever a
crash dropped. Every task is idempotent.

The task bodies live in :mod:`node.worker`; this module only names and registers them, so that the SCP
process (which enqueues) and the worker process (which runs) agree on the names without the SCP importing
the conversion and model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from huey import Huey, RedisHuey, SqliteHuey, crontab

from node.config import ConfigError, NodeConfig
from node.flow.timers import TimerWheel

QUEUE_NAME = "dicom-node"
PRECISE_DELAY_MAX_SECONDS = 600.0  # shorter quiet-timer checks run on an in-process timer


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


def _runner(name: str) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        from node.flow import worker  # imported lazily: only the worker process runs task bodies

        return getattr(worker.runtime(), name)(*args)

    run.__name__ = name
    return run


class Queue:
    """The node's tasks on one Huey instance: ``check_study``, ``run_job``, ``deliver``, ``sweep``."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.huey = make_huey(cfg)
        h = self.huey
        self.check_study = h.task(name="check_study")(_runner("check_study"))
        self.run_job = h.task(name="run_job")(_runner("run_job"))
        self.deliver = h.task(name="deliver")(_runner("deliver"))
        self.sweep = h.periodic_task(crontab(minute="*"), name="sweep")(_runner("sweep"))
        self._timers: TimerWheel | None = None

    def schedule_check(self, study_uid: str, delay: float) -> None:
        """Enqueue the study's quiet-timer check in ``delay`` seconds.

        Short delays run on an in-process timer (:mod:`node.timers`): Huey's scheduler works in whole-second
        ticks, which added up to a second (twice when the study was still receiving) to every study. Long delays
        stay with Huey's durable schedule. A timer lost with its process is re-armed when the worker starts.
        """
        delay = max(0.0, delay)
        if delay > PRECISE_DELAY_MAX_SECONDS:
            self.check_study.schedule(args=(study_uid,), delay=delay)
            return
        if self._timers is None:
            self._timers = TimerWheel("quiet-timers")
        self._timers.call_later(delay, self.check_study, study_uid)

    def enqueue_job(self, job_id: int, delay: float = 0.0) -> None:
        if delay > 0:
            self.run_job.schedule(args=(job_id,), delay=delay)
        else:
            self.run_job(job_id)

    def enqueue_delivery(self, destination: str, delay: float = 0.0) -> None:
        if delay > 0:
            self.deliver.schedule(args=(destination,), delay=delay)
        else:
            self.deliver(destination)

    def consumer(self, workers: int):
        """A Huey consumer tuned for low latency: idle workers poll every 0.01..0.05 s, not up to 10 s.

        Each hop of a study (check -> job -> delivery) waits for a poll; at 0.5 s that was up to 1.5 s per study.
        An idle poll is one read of the queue table per worker thread (about 80 small reads a second).
        """
        return self.huey.create_consumer(workers=workers, worker_type="thread", periodic=True,
                                         initial_delay=0.01, backoff=1.5, max_delay=0.05,
                                         scheduler_interval=1, check_worker_health=True)
