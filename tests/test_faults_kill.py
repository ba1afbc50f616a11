"""Faults: SIGKILL of the whole node (SCP and worker at once) at the worst moments, then a restart.

* during a C-STORE association: every instance the sender saw acknowledged is in the database and the spool,
  readable; what was not acknowledged is sent again by the sender and stored once;
* after the study is closed but before its jobs exist (failpoint ``decided``): the restarted worker decides it
  again (a closed study with no job lost its decider), and its results reach Orthanc once;
* during conversion (failpoint ``converted``) and after the result files are written but before the job is
  committed (failpoint ``results_written``): the restart re-runs the job and the results reach Orthanc once;
* during the return C-STORE: Orthanc stored the SR but its reply is held by a stalling proxy, so the node
  never saw it; after the restart the node asks Orthanc (``verify_by: c-find``) and does not send it again.

Every once-only claim counts the C-STOREs Orthanc received (``count_cstores``), not the copies it kept.

The SIGKILL during the endpoint call, and with results waiting in the outbox, are in test_end_to_end_cxr.py.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from support.dcmtk import storescu
from support.nodekit import (db_rows, held_sop_uids, send, sop_uids, spool_sop_counts, status_json,
                             stored_sop_uids, study_uid_of, wait_until)
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.stallproxy import StallingProxy
from support.studies import copy_series, derive_cxr_study

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_sigkill_during_cstore_association_keeps_every_acknowledged_instance(tmp_path: Path, data: Path) -> None:
    files = copy_series(sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[:40], tmp_path / "ct",
                        patient_id="KILL-1")
    study_uid = study_uid_of(files[0])
    node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url="http://127.0.0.1:9/score", pacs=None))
    node.start()
    acked: list[str] = []
    try:
        ae = AE(ae_title="MODALITY")
        ae.dimse_timeout = ae.network_timeout = 5  # after the kill no reply will come
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
        assert assoc.is_established
        sent_after_kill = 0
        for i, f in enumerate(files):
            if i == 15:
                node.kill()  # the association is open, the sender is mid-study
            ds = pydicom.dcmread(f)
            try:
                rsp = assoc.send_c_store(ds)
            except (RuntimeError, OSError):
                break
            if rsp is not None and rsp.get("Status") == 0x0000:
                acked.append(str(ds.SOPInstanceUID))
                if i >= 15:
                    sent_after_kill += 1
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.abort()
        assert len(acked) == 15 and sent_after_kill == 0, f"{len(acked)} acknowledged"

        node.start()
        stored = stored_sop_uids(node)
        missing = set(acked) - stored
        assert not missing, f"{len(missing)} acknowledged instance(s) lost by the SIGKILL"
        # every row points to a complete, readable file of that instance
        for uid, path in db_rows(node, "SELECT sop_instance_uid, path FROM instances"):
            assert pydicom.dcmread(path).SOPInstanceUID == uid
        # the sender resends the whole study (it cannot know more): each instance is stored exactly once
        proc = storescu("127.0.0.1", node.port, files, extra=["-x="])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        sent = sop_uids(files)
        assert held_sop_uids(node, study_uid) == sorted(sent), "the database holds exactly what was sent"
        assert spool_sop_counts(node) == Counter(sent), "one spool file per instance sent, none twice"
        wait_until(lambda: status_json(node)["studies"].get("done"), 30, "the CT study to be decided (no rule)")
    finally:
        node.stop()
    print(f"\nSIGKILL mid-association: {len(acked)} acknowledged before the kill, all kept; "
          f"{len(files)} after the resend, no duplicate")


@pytest.mark.parametrize("point", ["decided", "converted", "results_written"])
def test_sigkill_during_the_job_delivers_exactly_once(tmp_path: Path, data: Path, point: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        # "decided": the study is closed, its jobs not created; a closed study with no job is decided again by the
        # restarted worker's sweep
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url,
                                                 pacs=(pacs.aet, pacs.dicom_port)))
        monkeypatch.setenv("DICOM_NODE_FAILPOINTS", f"{point}=60")
        node.start()
        try:
            send(node, study)
            wait_until(lambda: f"failpoint {point} reached" in node.logs(), 60, f"the job to reach {point}")
            calls_before = len(emulator.requests)
            node.kill()
            assert pacs.sop_instance_uids() == []
            monkeypatch.delenv("DICOM_NODE_FAILPOINTS")
            node.start()
            got = pacs.wait_for_instances(2, timeout=120)
            time.sleep(3)  # a second copy would show up by now
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
            status = status_json(node)
        finally:
            node.stop()
    assert len(uids) == 2 and len(set(uids)) == 2, uids
    assert {ds.Modality for ds in got} == {"SR", "PR"}
    assert status["outbox"] == {"delivered": 2}, status["outbox"]
    assert calls_before == (1 if point == "results_written" else 0)
    # the job ran again after the restart: exactly one more endpoint call
    assert len(emulator.requests) == calls_before + 1


def test_sigkill_during_the_return_cstore_delivers_exactly_once(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs, \
            StallingProxy(pacs.dicom_port) as proxy:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, proxy.port))
        # without a way to ask the PACS the node would resend (at-least-once): see test_exactly_once.py
        cfg["destinations"]["pacs"]["verify_by"] = "c-find"
        cfg["queue"] = {"lease_seconds": 2}  # the killed run's claim expires soon
        node = NodeProcess(tmp_path, cfg)
        pacs.set_modality("ainode", "AINODE", "127.0.0.1", node.port)  # Orthanc answers C-FIND of known AEs only
        node.start()
        try:
            send(node, study)
            # Orthanc stores the first result; its C-STORE response is held: the node waits for it
            first = wait_until(lambda: pacs.sop_instance_uids(), 90, "the first result to reach Orthanc")
            wait_until(lambda: proxy.held_pdus, 30, "the proxy to hold Orthanc's reply")
            node.kill()
            proxy.stall.clear()
            node.start()
            pacs.wait_for_instances(2, timeout=120)
            wait_until(lambda: status_json(node)["outbox"] == {"delivered": 2}, 60, "both outbox rows delivered")
            time.sleep(2)
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
        finally:
            node.stop()
    assert len(uids) == 2 and len(set(uids)) == 2, uids
    assert set(first) <= set(uids), "the resend must reuse the result's SOP Instance UID"
    assert len(emulator.requests) == 1, "results already made are not made again"


def test_a_silent_tcp_connection_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    """A health check or port scan that connects and never asks for an association: SIGTERM still drains at once.

    (It used to wait for pynetdicom's 30 s ACSE timeout, so every test's node.stop() took 30 s.)
    """
    import socket

    node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url="http://127.0.0.1:9/score", pacs=None))
    node.start()
    silent = socket.create_connection(("127.0.0.1", node.port))
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert node.stop() == 0
        assert time.monotonic() - t0 < 10, f"shutdown took {time.monotonic() - t0:.1f} s"
    finally:
        silent.close()
