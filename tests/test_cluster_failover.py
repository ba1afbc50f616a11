"""Fail-over: one node of a two-node cluster is SIGKILLed (its whole process group, as a power cut) while it holds a
study in every state, and the survivor finishes them all.

At the moment of the kill node A holds:

* **M**, running a model call (the endpoint emulator stalls it);
* **S**, sending: its results' outbox rows are claimed and marked in flight (failpoint ``delivering``);
* **Q**, waiting for its quiet time: received completely, its quiet timer armed in A's memory;
* **R**, receiving: a sender's association through the balancer landed on A and one of two instances is
  acknowledged. Its next C-STORE fails cleanly (the balancer closes the connection), and the sender resends the
  whole study through the balancer, which now only reaches B.

Then, counted at dcmtk ``storescp +uf`` (one file per C-STORE, duplicates included): every result of every study
reaches the PACS exactly once; every acknowledged instance is in the database; B takes over A's model call and
sends within the lease (``queue.lease_seconds`` + one sweep). The measured takeover times are printed (``-s``)
and written to ``failover.json`` beside the test's logs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from support.cluster import Cluster
from support.dcmtk import Storescp, storescu, transfer_syntax_flag
from support.nodekit import study_uid_of, wait_until
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# queue.lease_seconds of both nodes (the sweep runs every LEASE / 4); DICOM_NODE_TEST_LEASE measures another
LEASE = float(os.environ.get("DICOM_NODE_TEST_LEASE", "4"))
QUIET = 8.0   # node.study_complete_after_seconds (Q and R must still be receiving at the kill, on a busy machine)


def _study(tmp: Path, data: Path, name: str) -> list[Path]:
    return derive_cxr_study(tmp / name, data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                            data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=f"FAILOVER-{name}")


def _send(port: int, files: list[Path]) -> None:
    for f in files:
        proc = storescu("127.0.0.1", port, [f], extra=[transfer_syntax_flag(f)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _audited_on(cluster: Cluster, index: int, sop_uid: str) -> bool:
    path = cluster.shared / "nodes" / f"node-{index}" / "audit.jsonl"
    return path.exists() and any(json.loads(line).get("sop_instance_uid") == sop_uid
                                 for line in path.read_text().splitlines())


def _association_on_a(cluster: Cluster, files: list[Path]):
    """An association through the balancer that landed on node A, with ``files[0]`` acknowledged on it."""
    ds = pydicom.dcmread(files[0])
    for _ in range(6):  # round-robin: every other new connection goes to A
        ae = AE(ae_title="MODALITY")
        for f in files:
            other = pydicom.dcmread(f, stop_before_pixels=True)
            ae.add_requested_context(other.SOPClassUID, [other.file_meta.TransferSyntaxUID])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", cluster.port, ae_title="AINODE")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assert status is not None and status.Status == 0x0000
        if wait_until(lambda: _audited_on(cluster, 0, str(ds.SOPInstanceUID)) or
                      _audited_on(cluster, 1, str(ds.SOPInstanceUID)), 10, "the instance's audit line") and \
                _audited_on(cluster, 0, str(ds.SOPInstanceUID)):
            return assoc
        assoc.release()
    raise AssertionError("no association through the balancer reached node A")


def test_sigkill_of_a_node_holding_every_state_the_survivor_finishes_each_study_once(
        tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    m, s, q, r = (_study(tmp_path, data, name) for name in "MSQR")
    uid = {name: study_uid_of(files[0]) for name, files in zip("MSQR", (m, s, q, r))}
    timings: dict[str, float] = {}
    with EmulatorServer("127.0.0.1", 0) as emulator, Storescp(tmp_path / "pacs") as pacs, \
            Cluster(tmp_path, size=2, endpoint_url=emulator.url, pacs=(pacs.ae_title, pacs.port), quiet=QUIET,
                    lease_seconds=LEASE, start_nodes=0) as cluster:
        a, b = cluster.nodes
        try:
            cluster.start_node(0, env={"DICOM_NODE_FAILPOINTS": "delivering=600"})  # A never completes a send
            # M: its model call stalls on A
            emulator.script_faults([{"stall_seconds": 600}])
            _send(a.port, m)
            wait_until(lambda: emulator.in_flight == 1, 60, "M's model call to reach the endpoint")
            # S: converted, answered, results written; A claims their outbox rows and stops before the C-STORE
            _send(a.port, s)
            wait_until(lambda: "failpoint delivering reached" in a.logs(), 90, "A to claim S's outbox rows")
            cluster.start_node(1)
            # R: a sender's association through the balancer, on A, one instance acknowledged
            assoc = _association_on_a(cluster, r)
            # Q: complete on A, its quiet timer armed there
            _send(a.port, q)
            received = cluster.sql(f"SELECT state FROM studies WHERE study_uid IN ('{uid['Q']}', '{uid['R']}')")
            a.kill()
            killed_at = time.monotonic()
            assert received == [["receiving"], ["receiving"]], f"Q and R still receiving at the kill: {received}"

            # R's sender: the next C-STORE fails cleanly (no success), then it resends everything via the balancer
            try:
                status = assoc.send_c_store(pydicom.dcmread(r[1]))
                failed_cleanly = status is None or not status or status.Status != 0x0000
            except (RuntimeError, OSError):
                failed_cleanly = True
            assert failed_cleanly
            # pynetdicom's association thread marks the abort on its next loop, after send_c_store returned
            wait_until(lambda: not assoc.is_established, 10, "the sender's association to end")
            _send(cluster.port, r)
            timings["sender_resent_via_balancer_s"] = time.monotonic() - killed_at

            m_job = cluster.sql(f"SELECT id FROM jobs WHERE study_uid = '{uid['M']}'")[0][0]

            def taken(sql: str) -> bool:
                return bool(cluster.sql(sql))

            deadline = killed_at + 120
            while time.monotonic() < deadline and len(timings) < 3:
                if "model_call_taken_over_s" not in timings and taken(
                        f"SELECT 1 FROM jobs WHERE id = {m_job} AND (lease_owner LIKE 'node-1:%' OR state = 'done')"):
                    timings["model_call_taken_over_s"] = time.monotonic() - killed_at
                if "send_taken_over_s" not in timings and taken(
                        "SELECT 1 FROM outbox o JOIN results r ON r.sop_instance_uid = o.result_uid "
                        f"WHERE r.study_uid = '{uid['S']}' AND (o.lease_owner LIKE 'node-1:%' "
                        "OR o.state = 'delivered')"):
                    timings["send_taken_over_s"] = time.monotonic() - killed_at
                time.sleep(0.1)
            wait_until(lambda: cluster.status(via=1)["outbox"] == {"delivered": 8}, 180,
                       f"all 8 results delivered; {cluster.status(via=1)['outbox']}\n{cluster.logs()[-6000:]}")
            timings["all_delivered_s"] = time.monotonic() - killed_at
            time.sleep(3)  # a second C-STORE, if any, would land now
            counts = pacs.counts()
            results = cluster.sql("SELECT study_uid, sop_instance_uid FROM results")
            studies = dict(tuple(row) for row in cluster.sql("SELECT study_uid, state FROM studies"))
            stored = {row[0] for row in cluster.sql("SELECT sop_instance_uid FROM instances")}
        finally:
            (tmp_path / "failover.json").write_text(json.dumps(timings, indent=1))
            print(f"\nfail-over (lease {LEASE} s, sweep {LEASE / 4} s): {json.dumps(timings)}")
    acknowledged = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in [*m, *s, *q, r[0]]}
    assert acknowledged <= stored, "an acknowledged instance was lost"
    assert studies == {u: "done" for u in uid.values()}, studies
    assert {row[0] for row in results} == set(uid.values()) and len(results) == 8, results
    assert set(counts) == {row[1] for row in results}, (counts, results)
    assert set(counts.values()) == {1}, f"a result was C-STOREd more than once: {counts}"
    # within the lease: the dead node's heartbeats stop, its leases expire, the survivor's sweep takes them
    assert timings["model_call_taken_over_s"] < LEASE + LEASE / 4 + 6, timings
    assert timings["send_taken_over_s"] < LEASE + LEASE / 4 + 6, timings


def test_sigkill_of_the_node_waiting_for_a_commitment_report_the_survivor_gets_it_committed(
        tmp_path: Path, data: Path) -> None:
    """Results stored at Orthanc, commitment asked, no report yet (Orthanc cannot reach the node's AE); the node
    that sent them dies. The survivor asks again once the report is overdue, Orthanc now reports to the cluster's
    address (the balancer), and nothing is C-STOREd twice."""
    from node.emulator.server import EmulatorServer
    from support.orthanc import Orthanc
    from support.ports import free_port

    files = _study(tmp_path, data, "C")
    nowhere = free_port()  # the node's AE as Orthanc first knows it: nothing listens there
    with EmulatorServer("127.0.0.1", 0) as emulator, \
            Orthanc(tmp_path / "orthanc", count_cstores=True,
                    modalities={"ainode": ("AINODE", "127.0.0.1", nowhere)}) as orthanc, \
            Cluster(tmp_path, size=2, endpoint_url=emulator.url, pacs=("ORTHANC", orthanc.dicom_port), quiet=2.0,
                    lease_seconds=LEASE, start_nodes=1,
                    pacs_options={"storage_commitment": True, "commitment_timeout_seconds": 3}) as cluster:
        a, b = cluster.nodes
        _send(a.port, files)
        wait_until(lambda: cluster.status()["outbox"] == {"acknowledged": 2}, 120,
                   "both results stored at Orthanc, their commitment awaited")
        cluster.start_node(1)
        a.kill()
        assert orthanc.cstore_counts() and set(orthanc.cstore_counts().values()) == {1}
        orthanc.set_modality("ainode", "AINODE", "127.0.0.1", cluster.port)  # reports now reach the cluster
        wait_until(lambda: cluster.status(via=1)["outbox"] == {"committed": 2}, 120,
                   f"both results committed\n{cluster.logs()[-5000:]}")
        time.sleep(2)
        counts = orthanc.cstore_counts()
        survivor_log = b.logs()
    assert "asking again" in survivor_log
    assert len(counts) == 2 and set(counts.values()) == {1}, counts
