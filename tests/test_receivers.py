"""``node.receivers: 2``: two receiver processes share the DICOM port (SO_REUSEPORT).

* 4 parallel dcmtk storescu associations: every instance acknowledged is stored exactly once (database and
  spool), both receiver processes took connections (their process names in the log), and the quiet timer fires
  for every study, whichever process received it;
* a receiver killed with SIGKILL is restarted by ``serve`` and takes connections again;
* SIGTERM drains every receiver and ``serve`` exits 0; SIGKILL of ``serve`` alone takes the receivers with it
  (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.dcmtk import echoscu, storescu
from support.nodekit import db_rows, held_sop_uids, sop_uids, spool_sop_counts, study_uid_of, wait_until
from support.nodeproc import NodeProcess, node_config
from support.studies import copy_series

pytestmark = pytest.mark.slow

SENDERS = 4
ASSOC_RE = re.compile(r"\[([\w-]+)\] node\.dicom\.scp: association from (\w+)")


def receivers_with_associations(node: NodeProcess, calling_ae: str) -> set[str]:
    """Process names (MainProcess = serve, receiver-N = children) that logged an association from ``calling_ae``."""
    return {proc for proc, ae in ASSOC_RE.findall(node.logs()) if ae == calling_ae}


def receiver_pids(node: NodeProcess) -> dict[int, int]:
    """Receiver index -> pid of the child receivers running now (from ``pgrep -P serve``'s command lines)."""
    out = subprocess.run(["pgrep", "-a", "-P", str(node.proc.pid)], capture_output=True, text=True).stdout
    pids = {}
    for line in out.splitlines():
        pid, _, cmd = line.partition(" ")
        if m := re.search(r"node\.cli receiver .*--index (\d+)", cmd):
            pids[int(m.group(1))] = int(pid)
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not reaped yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][0] != "Z"
    except FileNotFoundError:
        return False


def echo_until_both_seen(node: NodeProcess, calling_ae: str, rounds: int = 10) -> set[str]:
    """Parallel C-ECHO associations until both processes logged one (Linux hashes each connection to one)."""
    seen: set[str] = set()
    for _ in range(rounds):
        with ThreadPoolExecutor(max_workers=SENDERS) as pool:
            results = list(pool.map(lambda _: echoscu("127.0.0.1", node.port, "AINODE", calling_ae=calling_ae),
                                    range(SENDERS)))
        assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
        seen = wait_until(lambda: receivers_with_associations(node, calling_ae), 10, "the echo associations' logs")
        if len(seen) == 2:
            break
    return seen


def test_two_receivers_share_the_port(tmp_path: Path, data: Path) -> None:
    sources = sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[:12]
    studies = [copy_series(sources, tmp_path / f"sender{i}", patient_id=f"RECV-{i}") for i in range(SENDERS)]
    cfg = node_config(tmp_path, endpoint_url="http://127.0.0.1:9", pacs=None, quiet=1.0)
    cfg["node"]["receivers"] = 2
    node = NodeProcess(tmp_path, cfg)
    node.start()
    try:
        wait_until(lambda: receiver_pids(node).get(1), 30, "receiver 1 to start")
        wait_until(lambda: re.search(r"receiver 1 \(process \d+\) listening", node.logs()), 30, "receiver 1 to listen")

        with ThreadPoolExecutor(max_workers=SENDERS) as pool:
            results = list(pool.map(lambda files: storescu("127.0.0.1", node.port, files, calling_ae="SENDER",
                                                           extra=["-v", "-x="], timeout=120), studies))
        for files, proc in zip(studies, results):
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, out[-2000:]
            assert len(re.findall(r"Received Store Response \(Success\)", out)) == len(files)
        sent_sops = [uid for files in studies for uid in sop_uids(files)]
        assert held_sop_uids(node) == sorted(sent_sops), "the database holds exactly what the senders sent"
        assert spool_sop_counts(node) == Counter(sent_sops), "one spool file per instance sent"
        sent = {study_uid_of(s[0]) for s in studies}
        assert {r[0] for r in db_rows(node, "SELECT DISTINCT study_uid FROM instances")} == sent

        # Four connections land on one receiver 1 time in 8: C-ECHO associations until both were seen.
        took = receivers_with_associations(node, "SENDER")
        if len(took) < 2:
            took |= echo_until_both_seen(node, "PROBE")
        assert took == {"MainProcess", "receiver-1"}, took

        # The quiet timer fired for every study (the CT matches no rule: complete, or done with no job).
        def decided() -> bool:
            rows = db_rows(node, "SELECT study_uid, state FROM studies")
            return {uid for uid, state in rows if state != "receiving"} == sent

        wait_until(decided, 30, "every study's quiet-timer check")

        # A dead receiver is restarted and takes connections again.
        old = receiver_pids(node)[1]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: receiver_pids(node).get(1) not in (None, old), 30, "receiver 1 to be restarted")
        wait_until(lambda: len(re.findall(r"receiver 1 \(process \d+\) listening", node.logs())) == 2, 30,
                   "the new receiver 1 to listen")
        assert re.search(rf"receiver 1 \(process {old}\) exited with -9; restarting it", node.logs())
        assert echo_until_both_seen(node, "AFTER") == {"MainProcess", "receiver-1"}

        # SIGTERM drains every receiver; serve exits 0 and no receiver is left.
        pids = list(receiver_pids(node).values())
        assert node.stop(timeout=60) == 0, node.logs()[-3000:]
        assert not any(alive(p) for p in pids)
        assert "receiver 1 draining" in node.logs()
    finally:
        node.kill()


def test_receivers_die_with_serve(tmp_path: Path) -> None:
    cfg = node_config(tmp_path, endpoint_url="http://127.0.0.1:9", pacs=None)
    cfg["node"]["receivers"] = 3
    node = NodeProcess(tmp_path, cfg)
    node.start()
    try:
        pids = wait_until(lambda: (p := receiver_pids(node)) and len(p) == 2 and p, 30, "receivers 1 and 2")
        os.kill(node.proc.pid, signal.SIGKILL)  # serve alone, not its process group
        node.proc.wait()
        wait_until(lambda: not any(alive(p) for p in pids.values()), 10, "the receivers to die with serve")
    finally:
        try:  # whatever is left of the group (the worker dies with serve too): never leave a process behind
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
