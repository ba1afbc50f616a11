"""When a study is complete: the quiet timer of every study, and the only reader of its setting.

A study counts as complete when no instance of it arrived for ``node.study_complete_after_seconds`` (the quiet
time). :class:`Intake` records received instances with that quiet time, arms each study's check when its quiet
time is due, re-arms the checks a dead process took with it, and opens the decision once a study is quiet
(``check_study`` in :mod:`node.flow.decide`). Everything else asks it, so the quiet time is read in one place.

Short delays run on an in-process :class:`TimerWheel`, not Huey's scheduler: Huey moves scheduled tasks to the
queue on whole-second ticks (``scheduler_interval`` >= 1 s), so a study's check ran up to a second late, twice when
the first check found the study still receiving. A timer fires on time and enqueues the check at once. Long delays
stay with Huey's durable schedule.

A timer lives in memory only. When a process dies, the worker's start re-arms the timers of every study still
receiving (:func:`node.flow.sweep.sweep` with ``fresh_start``; a restarted receiver does the same) and re-enqueues
those already quiet; the periodic sweep (``Store.stale_work``, every ``queue.sweep_seconds``) catches anything else.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from node.config import NodeConfig

if TYPE_CHECKING:  # pragma: no cover
    from node.flow.queue import Queue
    from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)

PRECISE_DELAY_MAX_SECONDS = 600.0  # shorter quiet-timer checks run on an in-process timer


class TimerWheel:
    """One daemon thread calling ``fn(*args)`` at the given monotonic times (earliest first)."""

    def __init__(self, name: str = "timers") -> None:
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._name = name
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in ``delay`` seconds (on the timer thread; exceptions are logged)."""
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn, args))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """How many calls are still to come."""
        with self._cond:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, fn, args = heapq.heappop(self._heap)
            try:
                fn(*args)
            except Exception:  # a failed enqueue must not stop the other timers; the sweep catches up
                log.exception("timer callback %s failed", getattr(fn, "__name__", fn))


class Intake:
    """The quiet timer of every study: record instances, arm and re-arm checks, open decisions."""

    def __init__(self, cfg: NodeConfig, store: "Store", queue: "Queue | None") -> None:
        """``queue`` None: instances are recorded but no check is armed (a receiver without a worker)."""
        self.quiet_seconds = cfg.node.study_complete_after_seconds
        self.store = store
        self.queue = queue
        self._timers: TimerWheel | None = None
        self._timers_lock = threading.Lock()

    def record(self, records: Sequence["InstanceRecord"]) -> list[tuple[str, float]]:
        """Record received instances (one transaction); returns (study, due time) of the checks to arm."""
        return self.store.record_instances(records, self.quiet_seconds)

    def arm(self, study_uid: str, due_at: float) -> None:
        """Check ``study_uid`` at ``due_at`` (epoch seconds; at once when it is past)."""
        if self.queue is None:
            return
        delay = max(0.0, due_at - time.time())
        if delay > PRECISE_DELAY_MAX_SECONDS:
            self.queue.check_study.schedule(args=(study_uid,), delay=delay)
            return
        with self._timers_lock:
            if self._timers is None:
                self._timers = TimerWheel("quiet-timers")
        self._timers.call_later(delay, self.queue.check_study, study_uid)

    def rearm(self) -> int:
        """Arm the check of every study still receiving: their timers died with the process that armed them."""
        due = self.store.receiving_not_due(self.quiet_seconds)
        for study_uid, due_at in due:
            self.arm(study_uid, due_at)
        return len(due)

    def begin_decision(self, study_uid: str) -> tuple[str, float | int]:
        """``("complete", version)`` when the study is quiet and this caller decides it; ``("wait", due time)``
        when it is still receiving; anything else: nothing to do (see ``Store.begin_decision``)."""
        return self.store.begin_decision(study_uid, self.quiet_seconds)

    def stale_work(self, *, fresh_start: bool = False) -> dict[str, list]:
        """Studies, jobs and destinations a crash or a lost task left behind (see ``Store.stale_work``)."""
        return self.store.stale_work(self.quiet_seconds, fresh_start=fresh_start)
