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

STOW-RS into the node's HTTP side (its own process, traced the same way) must show the same order before the
200 response (there the file is fsynced by its path, ``node.store.spool.fsync_file``).

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
    responses = [c for c in ok if c.name in ("sendto", "sendmsg") and sop_uid.encode() in c.payload()]
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


class Tracer:
    """``strace -f -p PID`` on a running process (every thread), for the calls this test reads; ``with`` block."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Tracer":
        self.proc = subprocess.Popen([require_tool("strace"), "-f", "-p", str(self.pid), "-o", str(self.out), "-y",
                                      "-xx", "-s", "65536",
                                      "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not _traced(self.pid):  # every thread of the process attached
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # detaches, leaving the process running
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def calls(self) -> list[Call]:
        return parse_trace(self.out.read_text(errors="replace"))


def _study(tmp: Path, data: Path) -> tuple[list[Path], list[str]]:
    """Three instances in two studies (so new study and series folders are made on the way)."""
    files = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id="DURABLE-1")
    files += derive_cxr_study(tmp / "study2", data / "cxr" / "cr_pa_jpeg_baseline.dcm", patient_id="DURABLE-2")
    return files, [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _node(tmp: Path, database: dict | None, **extra: object) -> NodeProcess:
    cfg = node_config(tmp, endpoint_url="http://127.0.0.1:9/score", pacs=None, quiet=30.0, **extra)
    cfg.pop("database", None)  # SQLite whatever the pass: the WAL's flush is what this test reads
    if database:
        cfg["database"] = database
    return NodeProcess(tmp, cfg)


def _trace_while_sending(tmp: Path, data: Path, database: dict | None) -> tuple[list[Call], list[str]]:
    """Start a node, trace its SCP's process, send three instances (one association each); the calls and the
    SOP Instance UIDs sent."""
    files, uids = _study(tmp, data)
    node = _node(tmp, database).start()
    assert node.proc is not None
    try:
        with Tracer(node.proc.pid, tmp / "strace.txt") as tracer:
            for f in files:  # each answered before the next is sent
                assert_ok(storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f)], timeout=60))
    finally:
        node.stop()
    return tracer.calls(), uids


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
def test_each_stowed_instance_is_flushed_before_the_stow_rs_response(tmp_path: Path, data: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """STOW-RS into the node's HTTP side (its own process, traced): the same order before the 200 response, here
    with the file fsynced by its path (node.store.spool.fsync_file) before the rename."""
    import httpx

    from node.dicomweb import multipart
    from support.ports import free_port

    files, uids = _study(tmp_path, data)
    monkeypatch.setenv("NODE_HTTP_TOKEN", "durable-token")
    port = free_port()
    node = _node(tmp_path, None, http={"host": "127.0.0.1", "port": port, "token_env": "NODE_HTTP_TOKEN"}).start()
    assert node.proc is not None
    try:
        deadline = time.monotonic() + 60
        while True:  # the HTTP side is a child process of serve: wait until it answers
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, node.logs()
            time.sleep(0.2)
        http_pid = _child_running(node.proc.pid, b"http")
        body, content_type = multipart.encode(f.read_bytes() for f in files)
        with Tracer(http_pid, tmp_path / "strace-http.txt") as tracer:
            rsp = httpx.post(f"http://127.0.0.1:{port}/dicomweb/studies", content=body, timeout=60, trust_env=False,
                             headers={"Content-Type": content_type, "Authorization": "Bearer durable-token"})
        assert rsp.status_code == 200, rsp.text
    finally:
        node.stop()
    faults = [fault for uid in uids for fault in order_faults(tracer.calls(), uid)]
    assert faults == [], "\n".join(faults)


def _child_running(parent: int, word: bytes) -> int:
    """The pid of the child process of ``parent`` whose command line holds ``word`` (serve's HTTP side)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and word in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"no child of {parent} runs {word!r}")


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
