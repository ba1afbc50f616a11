"""The storage folder shared by a cluster's nodes: concurrent writers of one file never leave a torn file.

Two nodes on two hosts can run writers with the same process id; a temporary name made of the pid alone was then
the same file for both (one's rename took the other's half-written bytes, or found its file gone).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from node.store import spool


def test_concurrent_writers_with_the_same_pid_never_tear_a_result_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool.os, "getpid", lambda: 4242)  # two hosts, one pid
    dst = tmp_path / "results" / "1.2.3" / "1.2.3.4.dcm"
    payloads = [bytes([65 + i]) * (256 * 1024) for i in range(2)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(40):
                spool.write_durably(dst, data)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert dst.read_bytes() in payloads
    assert not list(dst.parent.glob(".*.tmp")), "no temporary file left behind"


def _one_pending_result(store) -> None:  # noqa: ANN001  (node.store.state.Store)
    from node.store.records import InstanceRecord

    store.record_instances([InstanceRecord("1.2.3.1", "1.2.3", "1.2.3.0", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1",
                                           "/nowhere/1.dcm", 1, "SENDER")], 0.0)
    state, version = store.begin_decision("1.2.3", 0.0)
    assert state == "complete"
    (job_id,) = store.create_jobs("1.2.3", int(version), [("rule", "cxr", ["1.2.3.0"])])
    assert store.claim_job(job_id, "node-x:1:a", 60)
    assert store.finish_job(job_id, "node-x:1:a", state="done", outcome="ok", destinations=["pacs"], new_results=[
        {"sop_instance_uid": "1.2.3.9", "study_uid": "1.2.3", "series_uid": "1.2.3.8",
         "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22", "kind": "sr", "path": "/nowhere/9.dcm"}])


@pytest.mark.slow
def test_a_row_read_as_due_by_one_node_is_claimed_by_that_node_only(tmp_path: Path) -> None:
    """PostgreSQL, READ COMMITTED: node Y has read the due rows and not yet updated them when node X claims.

    Without row locks X could claim, send and settle the row before Y's UPDATE, which then took it again (a second
    C-STORE; bench scale once saw one). Y's read locks the rows it read (FOR UPDATE SKIP LOCKED), so X passes them
    by without waiting, and Y's UPDATE also re-checks that the row is still pending.
    """
    from sqlalchemy import event

    from node.store.state import Store
    from support.postgres import PostgresServer

    with PostgresServer() as pg:
        url = pg.create_database()
        x, y = Store.open(url), Store.open(url)
        _one_pending_result(x)
        y_read, x_done = threading.Event(), threading.Event()

        def pause_after_the_read(conn, cursor, statement, *args) -> None:  # noqa: ANN001
            if statement.lstrip().upper().startswith("SELECT OUTBOX.ID, OUTBOX.IN_FLIGHT"):
                y_read.set()
                assert x_done.wait(30)

        event.listen(y.engine, "after_cursor_execute", pause_after_the_read)
        got: list = []
        claimer = threading.Thread(target=lambda: got.append(y.claim_outbox("pacs", "node-y:1:b", 60)))
        claimer.start()
        assert y_read.wait(30)
        t0 = time.monotonic()
        x_got = x.claim_outbox("pacs", "node-x:1:a", 60)
        x_waited = time.monotonic() - t0
        x_done.set()
        claimer.join(30)
        x.engine.dispose()
        y.engine.dispose()
    assert x_got == [], f"node X claimed a row node Y had read as due: {x_got}"
    assert x_waited < 25, "node X waited for node Y's lock instead of passing the row by"
    assert len(got) == 1 and [r["result_uid"] for r in got[0]] == ["1.2.3.9"], got
