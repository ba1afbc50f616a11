"""The storage folder shared by a cluster's nodes: concurrent writers of one file never leave a torn file.

Two nodes on two hosts can run writers with the same process id; a temporary name made of the pid alone was then
the same file for both (one's rename took the other's half-written bytes, or found its file gone).
"""

from __future__ import annotations

import threading
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
def test_a_row_delivered_by_one_node_is_not_claimed_by_another_that_saw_it_pending(tmp_path: Path) -> None:
    """PostgreSQL, READ COMMITTED: node Y reads the due rows, node X claims, sends and settles them before Y's
    UPDATE runs; Y's UPDATE must see the row delivered and leave it (it once took it: a second C-STORE)."""
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
        (row,) = x.claim_outbox("pacs", "node-x:1:a", 60)
        x.settle_outbox(row["id"], row["lease_owner"], state="delivered", status="0x0000")
        x_done.set()
        claimer.join(30)
        x.engine.dispose()
        y.engine.dispose()
    assert got == [[]], f"node Y claimed a row node X had delivered: {got}"
