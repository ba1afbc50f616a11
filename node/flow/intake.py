"""When a study is complete: the quiet timer of every study, and the only reader of its setting.

A study counts as complete when no instance of it arrived for ``node.study_complete_after_seconds`` (the quiet
time), unless a trigger of higher precedence decides it first or holds it (MPPS, IAN, expected content, the
maximum wait: :mod:`node.flow.completion`, which gets the settings from here). :class:`Intake` records received
instances with that quiet time, arms each study's check when it is due, re-arms the checks a dead process took
with it, and opens the decision (``check_study`` in :mod:`node.flow.decide`). Everything else asks it, so the
timer settings are read in one place.

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
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Sequence

from node.config import NodeConfig
from node.flow.completion import Completion, Outcome

if TYPE_CHECKING:  # pragma: no cover
    from node.flow.queue import Queue
    from node.store.state import InstanceRecord, Store

log = logging.getLogger(__name__)

PRECISE_DELAY_MAX_SECONDS = 600.0  # shorter quiet-timer checks run on an in-process timer
#: checks asked for "now" of one study (a watched study's instances, node.flow.completion) are at least this far
#: apart: a 500-instance series enqueues ~20 checks a second, and the last instance is still checked within it
IMMEDIATE_CHECK_GAP_SECONDS = 0.05


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
        self.completion = Completion(cfg, store)
        self._timers: TimerWheel | None = None
        self._timers_lock = threading.Lock()
        self._pending: dict[str, float] = {}  # study -> the earliest check armed in this process and not yet fired
        self._fired: OrderedDict[str, float] = OrderedDict()  # study -> when its last check was enqueued (bounded)

    def record(self, records: Sequence["InstanceRecord"]) -> list[tuple[str, float]]:
        """Record received instances (one transaction); returns (study, due time) of the checks to arm."""
        return self.store.record_instances(records, self.quiet_seconds, self.completion.first_check_now)

    def arm(self, study_uid: str, due_at: float) -> None:
        """Check ``study_uid`` at ``due_at`` (epoch seconds; at once when it is past).

        A check already armed in this process for that time or earlier covers this one (every check arms the next
        itself while the study is not complete); checks asked for at once are ``IMMEDIATE_CHECK_GAP_SECONDS`` apart.
        """
        if self.queue is None:
            return
        t = time.time()
        delay = max(0.0, due_at - t)
        if delay > PRECISE_DELAY_MAX_SECONDS:
            self.queue.check_study.schedule(args=(study_uid,), delay=delay)
            return
        with self._timers_lock:
            if self._timers is None:
                self._timers = TimerWheel("quiet-timers")
            fired = self._fired.get(study_uid)
            if fired is not None and t + delay < fired + IMMEDIATE_CHECK_GAP_SECONDS:
                delay = fired + IMMEDIATE_CHECK_GAP_SECONDS - t
            due = t + delay
            pending = self._pending.get(study_uid)
            if pending is not None and pending <= due + 1e-3:
                return
            self._pending[study_uid] = due
        self._timers.call_later(delay, self._fire, study_uid, due)

    def _fire(self, study_uid: str, due: float) -> None:
        with self._timers_lock:
            if self._pending.get(study_uid) == due:
                del self._pending[study_uid]
            self._fired[study_uid] = time.time()
            self._fired.move_to_end(study_uid)
            while len(self._fired) > 4096:
                self._fired.popitem(last=False)
        assert self.queue is not None
        self.queue.check_study(study_uid)

    def rearm(self) -> int:
        """Arm the check of every study still receiving: their timers died with the process that armed them."""
        due = self.store.receiving_not_due(self.quiet_seconds)
        for study_uid, due_at in due:
            self.arm(study_uid, due_at)
        return len(due)

    def begin_decision(self, study_uid: str) -> Outcome:
        """``complete`` (with its version and trigger) when a trigger decides the study and this caller plans it;
        ``wait`` (with the time to look again) while it is not complete; ``skip``: nothing to do
        (:meth:`node.flow.completion.Completion.begin`)."""
        return self.completion.begin(study_uid)

    def stale_work(self, *, fresh_start: bool = False) -> dict[str, list]:
        """Studies, jobs and destinations a crash or a lost task left behind (see ``Store.stale_work``)."""
        return self.store.stale_work(self.quiet_seconds, fresh_start=fresh_start)
