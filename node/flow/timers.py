"""Precise in-process timers for short delays (the quiet timer), instead of Huey's scheduler.

Huey's scheduler moves scheduled tasks to the queue on whole-second ticks (``scheduler_interval`` >= 1 s), so a
study's check ran up to a second late, twice when the first check found the study still receiving. A timer
here fires on time and enqueues the task at once.

A timer lives in memory only. When a process dies, the worker's start re-arms the timers of every study still
receiving (``Runtime.sweep(fresh_start=True)``, the worker restarts with either process) and re-enqueues those
already quiet; the periodic sweep (``Store.stale_work``) catches anything else within a minute.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


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
