"""Exactly once, counted at the PACS: every C-STORE Orthanc receives is logged (a Lua filter), duplicates too.

Orthanc keeps one copy per SOP Instance UID and silently drops a second C-STORE of it, so counting what it
holds cannot see a resend; these tests count what it *received*. The node is SIGKILLed at the moments where a
send may have reached the PACS unseen, and must not send a result twice where the destination can tell:

* Storage Commitment (``storage_commitment: true``): results are ``committed`` only once Orthanc reports so
  (its N-EVENT-REPORT comes back on a new association to the node's AE, declared in its DicomModalities);
* killed with rows claimed but nothing sent (failpoint ``delivering``): after the restart the node asks
  Orthanc to commit them first; Orthanc reports them failed (it never got them) and they are sent once;
* killed while Orthanc's C-STORE reply is held (it stored the SR, the node never saw the answer): with
  ``verify_by: c-find`` the restart finds it there and does not send it again; without verification the node
  sends it a second time (at-least-once with the same UID: that is what docs/delivery.md promises there);
* killed while waiting for the commitment report (failpoint ``commitment_requested``): no second C-STORE;
* killed with rows claimed, nothing sent, no verification configured: counted at dcmtk ``storescp +uf`` (one
  file per C-STORE), one each.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from support.nodekit import send, status_json, wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.ports import free_port
from support.stallproxy import StallingProxy
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _study(tmp: Path, data: Path, lateral: bool = True) -> list[Path]:
    return derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                            data / "cxr" / "dx_lateral_thorax_veterinary.dcm" if lateral else None)


def _setup(tmp: Path, emulator_url: str, pacs_port: int, **dest: Any) -> tuple[NodeProcess, Orthanc]:
    cfg = node_config(tmp, endpoint_url=emulator_url, pacs=("ORTHANC", pacs_port))
    cfg["destinations"]["pacs"].update(dest)
    node = NodeProcess(tmp, cfg)
    orthanc = Orthanc(tmp / "orthanc", dicom_port=free_port(), count_cstores=True,
                      modalities={"ainode": ("AINODE", "127.0.0.1", node.port)})
    return node, orthanc


def _outbox(node: NodeProcess) -> dict[str, int]:
    return status_json(node)["outbox"]


def test_storage_commitment_marks_results_committed_once_orthanc_reports(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = _study(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        node, orthanc = _setup(tmp_path, emulator.url, 0, storage_commitment=True)
        with orthanc:
            node.config["destinations"]["pacs"]["port"] = orthanc.dicom_port
            node = NodeProcess(tmp_path, node.config)
            node.start()
            try:
                send(node, study)
                wait_until(lambda: _outbox(node) == {"committed": 2}, 120, "both results committed")
                time.sleep(2)
                counts = orthanc.cstore_counts()
                status_text = node.status()
            finally:
                node.stop()
    assert len(counts) == 2 and set(counts.values()) == {1}, counts
    assert "committed" in status_text


def test_kill_with_rows_claimed_before_any_cstore_asks_for_commitment_then_sends_once(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.emulator.server import EmulatorServer

    study = _study(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        node, orthanc = _setup(tmp_path, emulator.url, 0, storage_commitment=True)
        with orthanc:
            node.config["destinations"]["pacs"]["port"] = orthanc.dicom_port
            node = NodeProcess(tmp_path, node.config)
            monkeypatch.setenv("DICOM_NODE_FAILPOINTS", "delivering=60")
            node.start()
            try:
                send(node, study)
                wait_until(lambda: "failpoint delivering reached" in node.logs(), 90, "the rows to be claimed")
                node.kill()
                assert orthanc.cstore_counts() == {}
                monkeypatch.delenv("DICOM_NODE_FAILPOINTS")
                node.config["queue"] = {"lease_seconds": 2}  # the dead run's lease expires soon
                node = NodeProcess(tmp_path, node.config)
                node.runs = 1
                node.start()
                wait_until(lambda: _outbox(node) == {"committed": 2}, 180, "both results committed")
                time.sleep(2)
                counts = orthanc.cstore_counts()
                logs = node.logs()
            finally:
                node.stop()
    assert "asking for Storage Commitment first" in logs
    assert len(counts) == 2 and set(counts.values()) == {1}, counts


@pytest.mark.parametrize("verify", ["c-find", "none"])
def test_kill_while_the_pacs_reply_is_held(tmp_path: Path, data: Path, verify: str) -> None:
    """Orthanc stored the first result; the node never saw its answer and is killed. C-FIND: one C-STORE."""
    from node.emulator.server import EmulatorServer

    study = _study(tmp_path, data, lateral=False)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        node, orthanc = _setup(tmp_path, emulator.url, 0, verify_by=verify)
        with orthanc, StallingProxy(orthanc.dicom_port) as proxy:
            node.config["destinations"]["pacs"]["port"] = proxy.port
            node.config["queue"] = {"lease_seconds": 2}
            node = NodeProcess(tmp_path, node.config)
            node.start()
            try:
                send(node, study)
                first = wait_until(lambda: orthanc.cstore_counts(), 90, "the first result to reach Orthanc")
                wait_until(lambda: proxy.held_pdus, 30, "the proxy to hold Orthanc's reply")
                node.kill()
                proxy.stall.clear()
                node.start()
                wait_until(lambda: _outbox(node) == {"delivered": 2}, 120, "both outbox rows delivered")
                time.sleep(2)
                counts = orthanc.cstore_counts()
                logs = node.logs()
            finally:
                node.stop()
    (held_uid,) = first
    assert len(counts) == 2, counts
    if verify == "c-find":
        assert set(counts.values()) == {1}, counts
        assert "already at pacs (C-FIND): not sent again" in logs
    else:  # no way to ask: resent with the same SOP Instance UID (at-least-once, as docs/delivery.md says)
        assert counts[held_uid] == 2 and sorted(counts.values()) == [1, 2], counts


def test_kill_while_waiting_for_the_commitment_report_sends_nothing_twice(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.emulator.server import EmulatorServer

    study = _study(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        node, orthanc = _setup(tmp_path, emulator.url, 0, storage_commitment=True, commitment_timeout_seconds=3)
        with orthanc:
            node.config["destinations"]["pacs"]["port"] = orthanc.dicom_port
            node.config["queue"] = {"lease_seconds": 2}
            node = NodeProcess(tmp_path, node.config)
            monkeypatch.setenv("DICOM_NODE_FAILPOINTS", "commitment_requested=60")
            node.start()
            try:
                send(node, study)
                wait_until(lambda: "failpoint commitment_requested reached" in node.logs(), 90,
                           "the commitment request")
                node.kill()
                monkeypatch.delenv("DICOM_NODE_FAILPOINTS")
                node.start()
                wait_until(lambda: _outbox(node) == {"committed": 2}, 120, "both results committed")
                time.sleep(2)
                counts = orthanc.cstore_counts()
            finally:
                node.stop()
    assert len(counts) == 2 and set(counts.values()) == {1}, counts


def test_kill_before_the_cstore_without_verification_sends_each_result_once(
        tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows claimed, nothing sent, node killed: counted at dcmtk storescp (+uf: one file per C-STORE)."""
    from node.emulator.server import EmulatorServer
    from support.dcmtk import Storescp

    study = _study(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator, Storescp(tmp_path / "received") as peer:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(peer.ae_title, peer.port))
        cfg["queue"] = {"lease_seconds": 2}
        node = NodeProcess(tmp_path, cfg)
        monkeypatch.setenv("DICOM_NODE_FAILPOINTS", "delivering=60")
        node.start()
        try:
            send(node, study)
            wait_until(lambda: "failpoint delivering reached" in node.logs(), 90, "the rows to be claimed")
            node.kill()
            assert peer.counts() == {}
            monkeypatch.delenv("DICOM_NODE_FAILPOINTS")
            node.start()
            wait_until(lambda: _outbox(node) == {"delivered": 2}, 120, "both results delivered")
            time.sleep(2)
            counts = peer.counts()
        finally:
            node.stop()
    assert len(counts) == 2 and set(counts.values()) == {1}, counts
