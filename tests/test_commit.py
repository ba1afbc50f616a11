"""Group commit (node.commit) and the precise quiet timers (node.timers): the concurrency pieces of ingest."""

from __future__ import annotations

import threading
import time

import pytest

from node.store.commit import GroupCommitter
from node.flow.intake import TimerWheel
from support.testdb import database_url


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


def test_a_study_closed_by_a_decider_that_died_is_decided_again(tmp_path) -> None:
    """A kill between closing a quiet study and creating its jobs left it 'complete' with no job, for good (found
    by the soak: 1 study in 534 never got its job). Older than ``redecide_after``, it is decided again, once."""
    from sqlalchemy import update

    from node.store.records import InstanceRecord
    from node.store.schema import studies
    from node.store.state import Store

    store = Store.open(database_url(tmp_path))
    rec = InstanceRecord(sop_instance_uid="1.2.3.1", study_uid="1.2.3", series_uid="1.2.3.9", sop_class_uid="1.2",
                         transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(tmp_path / "x.dcm"), size_bytes=1,
                         calling_ae="MOD")
    store.record_instances([rec], quiet_seconds=0.0)
    assert store.begin_decision("1.2.3", 0.0) == ("complete", 1)
    # ... and the decider dies here: no create_jobs
    assert store.begin_decision("1.2.3", 0.0, redecide_after=60) == ("skip", 0)  # a live decider is not raced
    assert "1.2.3" not in store.stale_work(0.0, redecide_after=60)["studies"]
    with store.engine.begin() as conn:  # a minute later
        conn.execute(update(studies).where(studies.c.study_uid == "1.2.3")
                     .values(completed_at=studies.c.completed_at - 61))
    assert "1.2.3" in store.stale_work(0.0, redecide_after=60)["studies"]
    assert store.begin_decision("1.2.3", 0.0, redecide_after=60) == ("complete", 1)  # the same version again
    ids = store.create_jobs("1.2.3", 1, [("rule", "ep", ["1.2.3.9"])])
    assert len(ids) == 1
    assert store.begin_decision("1.2.3", 0.0, redecide_after=60) == ("skip", 0)  # decided: once
    assert "1.2.3" not in store.stale_work(0.0, redecide_after=60)["studies"]
