"""Faults: the PACS (a real Orthanc) is down for a while.

* down, then back on the same port: the results wait in the outbox (visible in ``dicom-node status``, with the
  last error) and are delivered once it returns, one copy each;
* down for longer than the destination allows (``max_attempts`` or ``give_up_after_seconds``): the results are
  parked with the reason (an ALERT in ``dicom-node status``) and nothing more is tried; ``dicom-node retry``
  sends them again once the PACS is back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.nodekit import send, status_json, wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.ports import free_port
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _study(tmp_path: Path, data: Path) -> list[Path]:
    return derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)


def test_pacs_down_then_back_delivers_from_the_outbox(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    pacs = Orthanc(tmp_path / "orthanc", dicom_port=free_port(), count_cstores=True)
    pacs.start()
    try:
        with EmulatorServer("127.0.0.1", 0) as emulator:
            node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url,
                                                     pacs=(pacs.aet, pacs.dicom_port)))
            node.start()
            try:
                pacs.stop(graceful=False)  # the PACS goes down before the results are ready
                send(node, _study(tmp_path, data))
                waiting = wait_until(lambda: [r for r in status_json(node)["pending_outbox"] if r["error"]], 60,
                                     "results waiting in the outbox with an error")
                assert len(waiting) == 2 and all(r["last_status"] == "network" for r in waiting), waiting
                text = node.status()
                assert "outbox, waiting to be sent" in text and "destination is unreachable" in text, text
                pacs.start()  # back, same port
                pacs.wait_for_instances(2, timeout=60)
                wait_until(lambda: status_json(node)["outbox"] == {"delivered": 2}, 30, "both rows delivered")
                time.sleep(1)
                uids = pacs.sop_instance_uids()
                cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
                assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
            finally:
                node.stop()
    finally:
        pacs.stop(graceful=False)
    assert len(uids) == 2 and len(set(uids)) == 2, uids
    assert len(emulator.requests) == 1


@pytest.mark.parametrize("limit", [{"max_attempts": 3}, {"give_up_after_seconds": 3, "max_attempts": 1000}],
                         ids=["max_attempts", "give_up_after_seconds"])
def test_pacs_down_too_long_parks_with_the_reason_and_retry_sends_again(tmp_path: Path, data: Path,
                                                                         limit: dict) -> None:
    from node.emulator.server import EmulatorServer

    pacs = Orthanc(tmp_path / "orthanc", dicom_port=free_port(), count_cstores=True)  # not started: the PACS is down
    with EmulatorServer("127.0.0.1", 0) as emulator:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port))
        cfg["destinations"]["pacs"].update(limit, backoff_initial_seconds=0.3, backoff_max_seconds=0.6)
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            send(node, _study(tmp_path, data))
            parked = wait_until(lambda: len(status_json(node)["parked"]) == 2 and status_json(node)["parked"], 90,
                                "both results parked")
            for row in parked:
                assert row["last_status"] == "network" and "destination is unreachable" in row["error"], row
                if limit["max_attempts"] == 3:
                    assert row["attempts"] == 3 and "gave up after 3 attempts" in row["error"], row
                else:
                    assert "not delivered within give_up_after_seconds (3 s" in row["error"], row
            text = node.status()
            assert "ALERT: results parked" in text and "dicom-node retry" in text, text
            assert "ALERT" in node.logs()
            pacs.start()
            time.sleep(2)
            assert pacs.sop_instance_uids() == [], "a parked result must not be sent until retried"
            out = subprocess.run([sys.executable, "-m", "node.cli", "retry", "--config", str(node.config_path)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0 and "2 parked result(s) queued again" in out.stdout, out.stdout + out.stderr
            pacs.wait_for_instances(2, timeout=60)
            wait_until(lambda: status_json(node)["outbox"] == {"delivered": 2}, 30, "both rows delivered")
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
        finally:
            node.stop()
            pacs.stop(graceful=False)
    assert len(uids) == 2 and len(set(uids)) == 2, uids
