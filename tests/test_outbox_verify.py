"""The outbox's once-only bookkeeping, against a real pynetdicom Storage SCP (no C-FIND, no commitment).

* a row claimed by a run that died (never settled) is marked ``verify_first`` at its next claim;
* with ``verify_by: c-find`` and a PACS that cannot be asked, the row is NOT sent again: it waits, in flight;
* without verification it is sent again (at-least-once);
* a commitment report only settles the rows of its own transaction;
* retention keeps a spool file that a resend rewrote after the purged row was committed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.pacs import MiniPACS
from test_outbox import make_outbox, outbox_rows

from node.flow.deliver import deliver_due


def _die_mid_send(store) -> None:
    """A run claims the rows and dies: the lease is never settled and expires."""
    rows = store.claim_outbox("pacs", "dead:1:x", lease_seconds=60)
    assert rows and not any(r["verify_first"] for r in rows)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE outbox SET lease_until = 0")


def test_an_unsettled_claim_is_verified_and_not_resent_when_the_pacs_cannot_be_asked(tmp_path: Path,
                                                                                     data: Path) -> None:
    with MiniPACS([]) as pacs:
        store, cfg, uids = make_outbox(tmp_path, data, pacs.port, verify_by="c-find")
        _die_mid_send(store)
        assert store.claim_outbox("pacs", "probe:1:x", 60)[0]["verify_first"] is True
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE outbox SET lease_until = 0")
        report = deliver_due(store, cfg, "pacs", "w:1:a")
        assert (report.delivered, report.retrying) == (0, 1)
        row = outbox_rows(store)[0]
        assert row["state"] == "pending" and row["in_flight"] == 1 and row["last_status"] == "verify"
        assert "cannot verify an unseen send" in row["error"]
        assert pacs.stored == [], "what might already be at the PACS is not sent blind"


def test_without_verification_an_unsettled_claim_is_sent_again(tmp_path: Path, data: Path) -> None:
    with MiniPACS([]) as pacs:
        store, cfg, uids = make_outbox(tmp_path, data, pacs.port)
        _die_mid_send(store)
        assert deliver_due(store, cfg, "pacs", "w:1:a").delivered == 1
        row = outbox_rows(store)[0]
        assert row["state"] == "delivered" and row["in_flight"] == 0
        assert pacs.stored == uids


def test_a_commitment_report_settles_only_its_own_transaction(tmp_path: Path, data: Path) -> None:
    with MiniPACS([]) as pacs:
        store, cfg, uids = make_outbox(tmp_path, data, pacs.port, n=2)
        rows = store.claim_outbox("pacs", "w:1:a", 60)
        for r in rows:
            store.settle_outbox(r["id"], r["lease_owner"], state="acknowledged", status="0x0000",
                                commit_txn="2.25.1", commit_due_at=time.time() + 600)
        assert store.record_commitment("2.25.999", uids, []) == (0, 0), "another transaction's report"
        assert store.record_commitment("2.25.1", [uids[0]], [uids[1]]) == (1, 1)
        states = {r["result_uid"]: (r["state"], r["commit_txn"]) for r in outbox_rows(store)}
        assert states == {uids[0]: ("committed", None), uids[1]: ("pending", None)}
        assert store.summary()["outbox"] == {"committed": 1, "pending": 1}


def test_retention_keeps_a_file_a_resend_rewrote_after_the_row_was_committed(tmp_path: Path, data: Path) -> None:
    from node.store.state import InstanceRecord

    with MiniPACS([]) as pacs:
        store, cfg, _ = make_outbox(tmp_path, data, pacs.port)
        spooled = tmp_path / "spooled.dcm"
        spooled.write_bytes(b"old")
        store.record_instances([InstanceRecord("1.2.3.5", "1.2.3", "1.2.3.4", "1.2", "1.2.840.10008.1.2.1",
                                               str(spooled), 3, "MOD")], quiet_seconds=0)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE studies SET state='done', completed_at=0")
        assert deliver_due(store, cfg, "pacs", "w:1:a").delivered == 1
        time.sleep(0.05)
        spooled.write_bytes(b"resend")  # the same SOP Instance UID arrives again: written, row not yet committed
        assert store.purge_delivered(0) == 1
        assert spooled.read_bytes() == b"resend", "the resend's file survives the purge"
        assert not (tmp_path / "r0.dcm").exists(), "the result file is purged"
        os.unlink(spooled)


def test_with_storage_commitment_a_stored_result_is_only_acknowledged_until_the_pacs_reports(
        tmp_path: Path, data: Path, caplog) -> None:
    """The mini PACS stores but offers no Storage Commitment: the row stays acknowledged and is asked about again."""
    from node.flow.deliver import recommit_overdue

    with MiniPACS([]) as pacs:
        store, cfg, uids = make_outbox(tmp_path, data, pacs.port, storage_commitment=True,
                                       commitment_timeout_seconds=3)
        report = deliver_due(store, cfg, "pacs", "w:1:a")
        assert (report.delivered, report.awaiting_commitment) == (0, 1)
        row = outbox_rows(store)[0]
        assert row["state"] == "acknowledged" and row["commit_txn"] and row["delivered_at"] is None
        assert "Storage Commitment request to pacs failed" in caplog.text
        assert recommit_overdue(store, cfg, "pacs") == 0, "not overdue yet"
        time.sleep(3.1)
        assert recommit_overdue(store, cfg, "pacs") == 1
        again = outbox_rows(store)[0]
        assert again["state"] == "acknowledged" and again["commit_txn"] != row["commit_txn"]
        assert store.record_commitment(again["commit_txn"], uids, []) == (1, 0)
        assert outbox_rows(store)[0]["state"] == "committed"
        assert pacs.stored == uids, "one C-STORE: asking about commitment never resends"
        assert deliver_due(store, cfg, "pacs", "w:1:a").delivered == 0
