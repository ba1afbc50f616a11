"""Group commit (node.commit) and the precise quiet timers (node.timers): the concurrency pieces of ingest."""

from __future__ import annotations

import threading
import time

import pytest

from node.store.commit import GroupCommitter
from node.flow.intake import TimerWheel


def test_concurrent_submits_share_transactions_and_each_gets_its_own_result() -> None:
    committed: list[list[int]] = []
    in_commit = threading.Lock()

    def commit(records):
        assert in_commit.acquire(blocking=False), "two transactions at once"
        try:
            time.sleep(0.02)  # a slow fsync: others queue up meanwhile
            committed.append(list(records))
            return [r * 10 for r in records]
        finally:
            in_commit.release()

    gc = GroupCommitter(commit)
    results: dict[int, object] = {}
    start = threading.Barrier(16)

    def worker(i: int) -> None:
        start.wait()
        results[i] = gc.submit(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {i: i * 10 for i in range(16)}
    assert sorted(r for batch in committed for r in batch) == list(range(16))  # each record exactly once
    assert gc.batches == len(committed) < 16
    assert gc.records == 16


def test_a_result_is_returned_only_after_its_commit_returned() -> None:
    done: set[int] = set()

    def commit(records):
        time.sleep(0.01)
        done.update(records)
        return [None] * len(records)

    gc = GroupCommitter(commit)
    seen_before_return: list[bool] = []

    def worker(i: int) -> None:
        gc.submit(i)
        seen_before_return.append(i in done)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen_before_return == [True] * 8


def test_a_failed_transaction_fails_every_record_of_its_batch_and_the_next_batch_goes_on() -> None:
    calls = 0

    def commit(records):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return list(records)

    gc = GroupCommitter(commit)
    with pytest.raises(OSError, match="disk full"):
        gc.submit(1)
    assert gc.submit(2) == 2  # the committer is not stuck after a failure


def test_timers_fire_in_time_order_and_on_time() -> None:
    wheel = TimerWheel()
    fired: list[tuple[str, float]] = []
    t0 = time.monotonic()
    for name, delay in (("late", 0.30), ("early", 0.05), ("middle", 0.15)):
        wheel.call_later(delay, lambda n=name: fired.append((n, time.monotonic() - t0)))
    deadline = time.monotonic() + 5
    while len(fired) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [n for n, _ in fired] == ["early", "middle", "late"]
    for (_, at), due in zip(fired, (0.05, 0.15, 0.30)):
        assert due <= at < due + 0.25  # not on Huey's whole-second ticks


def test_a_failing_timer_callback_does_not_stop_the_others() -> None:
    wheel = TimerWheel()
    fired = threading.Event()
    wheel.call_later(0.0, lambda: 1 / 0)
    wheel.call_later(0.02, fired.set)
    assert fired.wait(5)
