"""Group commit of received instances: the C-STORE handlers of several associations share one transaction.

Every handler must see its row committed (and fsynced) before it answers 0x0000. Committing one row per
transaction makes SQLite writers queue on the write lock, each paying a WAL fsync and, while waiting, SQLite's
busy-handler sleeps (1, 2, 5, 10... ms). Here the first handler to arrive becomes the leader: it commits every
record queued so far in one transaction; handlers that arrive meanwhile wait and are committed together by the
next leader (one of them), so a burst of N concurrent instances costs about two commits instead of N.

A single association gets no delay from this: its handler finds no commit in progress and commits at once.
A failed transaction fails every handler of the batch (each answers 0xA700; nothing of it was acknowledged).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

R = TypeVar("R")
T = TypeVar("T")


class _Waiter:
    __slots__ = ("record", "event", "lead", "result", "error")

    def __init__(self, record: object) -> None:
        self.record = record
        self.event = threading.Event()
        self.lead = False
        self.result: object = None
        self.error: BaseException | None = None


class GroupCommitter:
    """Leader/follower batching around ``commit(records) -> results`` (one result per record, same order)."""

    def __init__(self, commit: Callable[[Sequence[object]], Sequence[object]]) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        self._pending: list[_Waiter] = []
        self._busy = False
        self.batches = 0  # for tests and benchmarks: how many transactions were needed
        self.records = 0

    def submit(self, record: object) -> object:
        """Commit ``record`` (with whatever else is waiting); returns its result once it is durable."""
        me = _Waiter(record)
        with self._lock:
            self._pending.append(me)
            lead = not self._busy
            self._busy = True
        if not lead:
            me.event.wait()
            if not me.lead:
                return _outcome(me)
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            results = self._commit([w.record for w in batch])
            if len(results) != len(batch):
                raise RuntimeError("group commit: one result per record expected")
            for w, r in zip(batch, results):
                w.result = r
        except BaseException as exc:  # every waiter of the batch learns it failed
            for w in batch:
                w.error = exc
        with self._lock:
            self.batches += 1
            self.records += len(batch)
            if self._pending:  # hand the lead to the next waiter: this handler's answer must not wait longer
                nxt = self._pending[0]
                nxt.lead = True
                nxt.event.set()
            else:
                self._busy = False
        for w in batch:
            if w is not me:
                w.event.set()
        return _outcome(me)


def _outcome(w: _Waiter) -> object:
    if w.error is not None:
        raise w.error
    return w.result
