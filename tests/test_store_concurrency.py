"""Concurrent writers on one database, on SQLite and on PostgreSQL (a throwaway server started here).

SQLite serialises writers (``BEGIN IMMEDIATE``); PostgreSQL runs them at once under READ COMMITTED. The store must
give the same answers on both: one job per (study, rule, version) however many deciders race, one winner per
lease, every outbox row claimed by one sender only, one circuit row per endpoint.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import func, select

from node.store.records import InstanceRecord
from node.store.schema import circuits, jobs, outbox
from node.store.state import Store
from support import testdb
from support.postgres import PostgresServer

THREADS = 8


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer | None]:
    """This module's own server, unless the whole session already runs on PostgreSQL."""
    if testdb.on_postgresql():
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, pg_server: PostgresServer | None) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'node.db'}"
    else:
        url = pg_server.create_database() if pg_server is not None else testdb.fresh_postgresql_url()
    s = Store.open(url)
    try:
        yield s
    finally:
        s.engine.dispose()


def _at_once(fn: Callable[[int], Any], n: int = THREADS, timeout: float = 60.0) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released together; their results (an exception, or a thread still running
    after ``timeout`` seconds, fails the test)."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [i for i, t in enumerate(threads) if t.is_alive()]
    assert not stuck, f"thread(s) {stuck} still running after {timeout} s (a lock never released?)"
    assert not errors, errors
    return out


def test_at_once_fails_when_a_thread_never_finishes() -> None:
    """The helper every race below relies on: a writer that hangs fails the test instead of leaving its result
    None."""
    release = threading.Event()
    try:
        with pytest.raises(AssertionError, match="still running"):
            _at_once(lambda i: release.wait(30) if i == 1 else i, n=3, timeout=0.5)
    finally:
        release.set()
    assert _at_once(lambda i: i * 2, n=3) == [0, 2, 4]


def test_deciders_racing_on_one_study_version_make_one_job(store: Store) -> None:
    for round_ in range(5):
        study = f"1.2.3.{round_}"
        ids = _at_once(lambda i: store.create_jobs(study, 1, [("rule", "ep", ["1.2.3.9"])]))
        assert len({tuple(x) for x in ids}) == 1 and len(ids[0]) == 1, ids
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar() == 5


def test_one_worker_wins_a_job_lease(store: Store) -> None:
    [job_id] = store.create_jobs("1.2.3", 1, [("rule", "ep", ["1.2.3.9"])])
    got = _at_once(lambda i: store.claim_job(job_id, f"w:{i}:x", 60))
    assert sum(g is not None for g in got) == 1, got


def test_senders_claiming_at_once_never_share_an_outbox_row(store: Store, tmp_path: Path) -> None:
    [job_id] = store.create_jobs("1.2.3", 1, [("rule", "ep", ["1.2.3.9"])])
    assert store.claim_job(job_id, "w:0:x", 60) is not None
    rows = [{"sop_instance_uid": f"1.2.3.8.{k}", "study_uid": "1.2.3", "series_uid": "1.2.3.8", "sop_class_uid": "1.2",
             "kind": "sr", "path": str(tmp_path / f"r{k}.dcm")} for k in range(40)]
    assert store.finish_job(job_id, "w:0:x", state="done", outcome="ok", new_results=rows, destinations=["pacs"])
    claimed = _at_once(lambda i: [r["id"] for r in store.claim_outbox("pacs", f"s:{i}:x", 60, limit=7)])
    flat = [row_id for batch in claimed for row_id in batch]
    assert len(flat) == len(set(flat)) == 40, claimed
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == 40


def test_first_failures_at_once_open_one_circuit(store: Store) -> None:
    got = _at_once(lambda i: store.circuit_failed("ep", i + 1, delay_for=lambda n: 10.0 * n, retry_after=None,
                                                  reason="HTTP 503"))
    with store.engine.connect() as conn:
        rows = conn.execute(select(circuits)).mappings().all()
    assert len(rows) == 1 and rows[0]["state"] == "open"
    assert rows[0]["failures"] == 1, "jobs in flight when it opened say nothing new about the endpoint"
    assert all(g["endpoint"] == "ep" for g in got)


def test_associations_recording_one_new_study_at_once_make_one_study(store: Store, tmp_path: Path) -> None:
    def record(i: int) -> list[tuple[str, float]]:
        return store.record_instances([InstanceRecord(
            sop_instance_uid=f"1.2.5.{i}", study_uid="1.2.5", series_uid="1.2.5.9", sop_class_uid="1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(tmp_path / f"{i}.dcm"), size_bytes=1,
            calling_ae="MOD")], quiet_seconds=5.0)

    scheduled = _at_once(record)
    assert sum(len(s) for s in scheduled) == 1, "one quiet-timer check for the new study"
    assert len(store.study_instances("1.2.5")) == THREADS
    assert store.study("1.2.5")["state"] == "receiving"
