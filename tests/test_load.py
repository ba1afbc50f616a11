"""Load: 8 dcmtk storescu senders push a CT study each (copies of the 64-slice chest CT with new UIDs) at once,
while chest X-ray jobs run in the worker (the emulator answers slowly) and a prober times C-ECHO round trips.

* every instance a sender saw acknowledged is in the database and in the spool, once;
* the node's memory stays bounded: the SCP streams to disk, so its peak RSS (``VmHWM``) grows by far less than
  the ~270 MB received;
* the node's own work does not block the SCP: C-ECHO (association + echo + release) stays fast meanwhile.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from support.dcmtk import storescu
from support.nodekit import (db_rows, held_sop_uids, send, sop_uids, spool_files, status_json, study_uid_of,
                             wait_until)
from support.nodeproc import NodeProcess, node_config
from support.studies import copy_series, derive_cxr_study

pytestmark = [pytest.mark.load, pytest.mark.slow]

SENDERS = 8


def vm_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in KiB (VmHWM: peak resident set, VmRSS: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def worker_pid(node_pid: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(node_pid)], capture_output=True, text=True).stdout.split()
    assert out, "the worker process is not running"
    return int(out[0])


def echo_rtt(port: int) -> float:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    t0 = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established, "the node refused an association under load"
    status = assoc.send_c_echo()
    assoc.release()
    assert status is not None and status.Status == 0x0000
    return time.monotonic() - t0


def test_eight_concurrent_senders(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    sources = sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))
    studies = [copy_series(sources, tmp_path / f"sender{i}", patient_id=f"LOAD-{i}") for i in range(SENDERS)]
    total_bytes = sum(f.stat().st_size for s in studies for f in s)
    cxr = [derive_cxr_study(tmp_path / f"cxr{i}", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                            data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=f"LOADCXR-{i}")
           for i in range(3)]
    with EmulatorServer("127.0.0.1", 0, delay_seconds=4.0) as emulator:  # a slow model: jobs stay running
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url, pacs=None, quiet=0.5))
        node.start()
        try:
            pid = node.proc.pid
            base_rss = vm_kib(pid, "VmRSS")
            for study in cxr:
                send(node, study)
            wait_until(lambda: emulator.in_flight >= 1, 60, "chest X-ray jobs calling the (slow) endpoint")

            rtts: list[float] = []
            stop = threading.Event()

            def probe() -> None:
                while not stop.is_set():
                    rtts.append(echo_rtt(node.port))
                    stop.wait(0.2)

            prober = threading.Thread(target=probe, daemon=True)
            prober.start()
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=SENDERS) as pool:
                results = list(pool.map(lambda files: storescu("127.0.0.1", node.port, files,
                                                               extra=["-v", "-x="], timeout=300), studies))
            elapsed = time.monotonic() - t0
            jobs_running_during_load = emulator.max_in_flight
            stop.set()
            prober.join(30)

            acked_total = 0
            for files, proc in zip(studies, results):
                out = proc.stdout + proc.stderr
                assert proc.returncode == 0, out[-2000:]
                acked = re.findall(r"Received Store Response \(Success\)", out)
                acked_total += len(acked)
                assert len(acked) == len(files), f"{len(acked)} of {len(files)} acknowledged"
                held = held_sop_uids(node, study_uid_of(files[0]))
                assert held == sorted(sop_uids(files)), "the node holds exactly what this sender sent"
            stored_db = db_rows(node, "SELECT count(*) FROM instances")[0][0]
            stored_files = len(spool_files(node))
            peak_scp = vm_kib(pid, "VmHWM")
            peak_worker = vm_kib(worker_pid(pid), "VmHWM")
            wait_until(lambda: status_json(node)["jobs"].get("done") == len(cxr), 90, "the chest X-ray jobs")
        finally:
            node.stop()
    n_cxr = sum(len(s) for s in cxr)
    assert stored_db == acked_total + n_cxr and stored_files == stored_db
    grown_mib = (peak_scp - base_rss) / 1024
    report = (f"\nload: {SENDERS} senders, {acked_total} instances sent and acknowledged, {stored_db - n_cxr} stored "
              f"(+{n_cxr} chest X-ray), {total_bytes / 2**20:.0f} MiB in {elapsed:.1f} s "
              f"({acked_total / elapsed:.0f} instances/s); SCP RSS {base_rss / 1024:.0f} MiB at start, peak "
              f"{peak_scp / 1024:.0f} MiB (+{grown_mib:.0f}); worker peak {peak_worker / 1024:.0f} MiB; "
              f"C-ECHO round trip under load: median {statistics.median(rtts) * 1000:.0f} ms, "
              f"max {max(rtts) * 1000:.0f} ms over {len(rtts)} probes; endpoint calls in flight at most "
              f"{jobs_running_during_load}")
    print(report)
    assert acked_total == SENDERS * len(sources)
    assert grown_mib < 0.5 * total_bytes / 2**20, "the SCP must stream to disk, not hold the studies"
    assert jobs_running_during_load >= 1
    assert len(rtts) >= 3 and max(rtts) < 3.0, f"C-ECHO blocked under load: {sorted(rtts)[-5:]}"
