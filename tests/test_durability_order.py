"""Durability before success, read at the system calls: nothing is acknowledged before it is on disk.

The README promises that before the node answers a C-STORE with 0x0000 the instance's file is fsynced, renamed into
the spool, its directory fsynced and its database row committed (and, SQLite at ``synchronous=FULL``, the
write-ahead log flushed). A SIGKILL cannot show that (the page cache survives it), so here the running node
(``dicom-node serve``, the SCP's process with all its threads) is traced with ``strace -f -p``, and, for every
instance storescu sends, the trace must show, in this order:

1. ``fsync`` of the received file, completed (the descriptor pynetdicom wrote it through);
2. its ``rename`` to ``<spool>/instances/<study>/<series>/<sop>.dcm``;
3. ``fsync`` of that directory, begun after the rename and completed;
4. ``fsync``/``fdatasync`` of the database's write-ahead log (``node.db-wal``), begun after the rename and
   completed: the commit of the instance's row;
5. only then, the first ``sendto`` on the association's socket carrying the instance's SOP Instance UID: the
   C-STORE response.

The same analysis of a node configured ``sqlite_synchronous: NORMAL`` (``unsafe_fast_sqlite``) must find step 4
missing (a test of this test). The ``PRAGMA synchronous`` of the database connections a node makes is read back from
the node ``serve`` builds (``node.serve.Node``), in a process of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from support.dcmtk import assert_ok, storescu, transfer_syntax_flag
from support.nodeproc import NodeProcess, node_config
from support.studies import derive_cxr_study
from support.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.sqlite]  # the commit's flush is SQLite's WAL sync, read in the trace

_LINE = re.compile(r"^(?P<tid>\d+)\s+(?:\d\d:\d\d:\d\d\.\d+\s+)?(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*?)(?:\) += (?P<ret>-?\d+).*| <unfinished \.\.\.>)$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>.*\) += (?P<ret>-?\d+)")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
_HEX = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def _text(escaped: str) -> str:
    """A path as strace -xx prints it (every byte as \\xHH)."""
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), escaped)


@dataclass
class Call:
    name: str
    args: str
    start: int  # line index where it began
    end: int | None = None  # line index where it returned (None: never, in the trace)
    ret: int | None = None

    @property
    def fd_path(self) -> str | None:
        m = _FD_PATH.match(self.args)
        return _text(m.group("path")) if m else None

    def payload(self) -> bytes:
        m = _HEX.search(self.args)
        return bytes.fromhex(m.group(1).replace("\\x", "")) if m else b""

    def rename_paths(self) -> tuple[str, str]:
        quoted = re.findall(r'"([^"]*)"', self.args)
        return _text(quoted[0]), _text(quoted[1])


def parse_trace(text: str) -> list[Call]:
    """strace -f output (pid-prefixed lines, calls split by other threads joined again) as calls in order."""
    calls: list[Call] = []
    pending: dict[tuple[str, str], Call] = {}
    for i, line in enumerate(text.splitlines()):
        m = _LINE.match(line)
        if not m:
            continue
        tid, rest = m.group("tid"), m.group("rest")
        resumed = _RESUMED.match(rest)
        if resumed:
            call = pending.pop((tid, resumed.group("name")), None)
            if call is not None:
                call.end, call.ret = i, int(resumed.group("ret"))
            continue
        c = _CALL.match(rest)
        if not c:
            continue
        call = Call(c.group("name"), c.group("args"), start=i)
        if c.group("ret") is not None:
            call.end, call.ret = i, int(c.group("ret"))
        else:
            pending[(tid, call.name)] = call
        calls.append(call)
    return calls


def order_faults(calls: list[Call], sop_uid: str) -> list[str]:
    """What is missing or out of order, for one instance, in the sequence the module docstring lists."""
    ok = [c for c in calls if c.ret is not None and c.ret >= 0]
    renames = [c for c in ok if c.name.startswith("rename") and c.rename_paths()[1].endswith(f"/{sop_uid}.dcm")]
    responses = [c for c in ok if c.name in ("sendto", "sendmsg", "write") and sop_uid.encode() in c.payload()]
    if len(renames) != 1 or not responses:
        return [f"{sop_uid}: {len(renames)} rename(s) into the spool and {len(responses)} response(s) in the trace"]
    rename, response = renames[0], min(responses, key=lambda c: c.start)
    src, dst = rename.rename_paths()
    syncs = [c for c in ok if c.name in ("fsync", "fdatasync") and c.end is not None]
    faults = []
    if not any(c.fd_path == src and c.end < rename.start for c in syncs):
        faults.append(f"{sop_uid}: the received file ({src}) was not fsynced before its rename")
    if not any(c.fd_path == os.path.dirname(dst) and c.start > rename.end and c.end < response.start for c in syncs):
        faults.append(f"{sop_uid}: its directory was not fsynced between the rename and the response")
    if not any((c.fd_path or "").endswith("node.db-wal") and c.start > rename.end and c.end < response.start
               for c in syncs):
        faults.append(f"{sop_uid}: the database's write-ahead log was not flushed between the rename and the response")
    if rename.end > response.start:
        faults.append(f"{sop_uid}: the response left before the rename")
    return faults


def _trace_while_sending(tmp: Path, data: Path, database: dict | None) -> tuple[list[Call], list[str]]:
    """Start a node, attach strace to its SCP process (every thread), send a three-instance study; the calls and
    the SOP Instance UIDs sent."""
    cfg = node_config(tmp, endpoint_url="http://127.0.0.1:9/score", pacs=None, quiet=30.0)
    cfg.pop("database", None)  # SQLite whatever the pass: the WAL's flush is what this test reads
    if database:
        cfg["database"] = database
    files = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id="DURABLE-1")
    files += derive_cxr_study(tmp / "study2", data / "cxr" / "cr_pa_jpeg_baseline.dcm", patient_id="DURABLE-2")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    node = NodeProcess(tmp, cfg).start()
    trace_path = tmp / "strace.txt"
    assert node.proc is not None
    tracer = subprocess.Popen([require_tool("strace"), "-f", "-p", str(node.proc.pid), "-o", str(trace_path),
                               "-y", "-xx", "-s", "65536",
                               "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _traced(node.proc.pid):  # every thread of the SCP's process attached
            assert tracer.poll() is None, tracer.stderr.read() if tracer.stderr else ""
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        for f in files:  # one association per file: each answered before the next is sent
            assert_ok(storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f)], timeout=60))
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches, leaving the node running
        try:
            tracer.wait(30)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
        node.stop()
    return parse_trace(trace_path.read_text(errors="replace")), uids


def _traced(pid: int) -> bool:
    tasks = list(Path(f"/proc/{pid}/task").iterdir())
    return bool(tasks) and all(
        re.search(r"^TracerPid:\s*[1-9]", (t / "status").read_text(), re.M) for t in tasks)


@pytest.mark.timeout(400)
def test_each_instance_is_flushed_file_directory_and_commit_before_its_response(tmp_path: Path, data: Path) -> None:
    calls, uids = _trace_while_sending(tmp_path, data, None)
    faults = [fault for uid in uids for fault in order_faults(calls, uid)]
    assert faults == [], "\n".join(faults)


@pytest.mark.timeout(400)
def test_the_trace_analysis_sees_a_commit_that_is_not_flushed(tmp_path: Path, data: Path) -> None:
    """synchronous=NORMAL (allowed only with unsafe_fast_sqlite) leaves the WAL unsynced at commit: step 4 fails."""
    calls, uids = _trace_while_sending(tmp_path, data, {"sqlite_synchronous": "NORMAL", "unsafe_fast_sqlite": True})
    faults = [fault for uid in uids for fault in order_faults(calls, uid)]
    assert faults and all("write-ahead log was not flushed" in f for f in faults), faults
    assert len(faults) == len(uids)


_PRAGMA = """
import sys
from node.config import load_config
from node.serve import Node
node = Node(load_config(sys.argv[1]))
with node.store.engine.connect() as conn:
    print(conn.exec_driver_sql("PRAGMA synchronous").scalar(), conn.exec_driver_sql("PRAGMA journal_mode").scalar())
node.store.engine.dispose()
"""


@pytest.mark.parametrize("database, expected", [(None, "2 wal"), ({"sqlite_synchronous": "EXTRA"}, "3 wal")])
def test_the_node_s_database_connections_run_at_synchronous_full_or_more(tmp_path: Path, database: dict | None,
                                                                       expected: str) -> None:
    """PRAGMA synchronous read back from the connections of the node ``serve`` builds (2: FULL, 3: EXTRA)."""
    import yaml

    cfg = node_config(tmp_path, endpoint_url="http://127.0.0.1:9/score", pacs=None)
    cfg.pop("database", None)
    if database:
        cfg["database"] = database
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-c", _PRAGMA, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == expected.split(), out.stdout
