"""Heartbeats: a claimed job or outbox batch renews its short lease while it works.

A lease (``queue.lease_seconds``, default 60 s) says "this worker is still on it". The holder renews it every
``lease_seconds / 4`` from a daemon thread, so the lease outlives a model call of any length while the worker
lives, and expires within ``lease_seconds`` of the worker hanging or dying: only then may the sweep hand the work
to another worker. (``serve`` releases the leases of a worker it saw die at once, without waiting.)
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Callable

log = logging.getLogger(__name__)


class Heartbeat:
    """``with Heartbeat(renew, lease_seconds, what):`` calls ``renew()`` every ``lease_seconds / 4`` until the block ends.

    ``renew`` returns whether the lease is still held (a truthy count for a batch); once it is not, the heartbeat
    stops and :attr:`lost` is True (the work's final commit checks the lease again and is refused).
    """

    def __init__(self, renew: Callable[[], object], lease_seconds: float, what: str) -> None:
        self._renew = renew
        self._interval = max(0.05, lease_seconds / 4.0)
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {what}", daemon=True)
        self.lost = False
        self.beats = 0

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                held = self._renew()
            except Exception:  # a database hiccup: try again at the next beat, the lease has 3 more in it
                log.warning("%s: renewing the lease failed; trying again", self._what, exc_info=True)
                continue
            self.beats += 1
            if not held and not self._stop.is_set():  # (released or finished meanwhile: not lost)
                self.lost = True
                log.warning("%s: lease lost (taken over after it expired); its result will not be committed",
                            self._what)
                return
