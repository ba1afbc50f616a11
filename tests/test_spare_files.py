"""node.dicom.spare_files: receive files made ahead of need, taken by the receive guard, cleaned up after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from node.dicom import spare_files
from node.dicom.receive_guard import GuardedTempFile
from node.dicom.spare_files import SpareFiles, take_spare


def _wait_ready(pool: SpareFiles, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(pool._ready) < n:
        assert time.monotonic() < deadline, "no spare files were made"
        time.sleep(0.01)


def test_the_receive_guard_writes_into_a_spare_and_the_pool_refills(tmp_path: Path) -> None:
    pool = SpareFiles(tmp_path, "node-a", keep=2).start()
    try:
        _wait_ready(pool, 2)
        spares = sorted(p.name for p in tmp_path.iterdir())
        assert len(spares) == 2 and all(n.startswith(f"spare-node_a-{os.getpid()}-") for n in spares)
        f = GuardedTempFile(dir=str(tmp_path))
        assert Path(f.name).name in spares  # no file of its own
        f.write(b"DICM" * 10)
        f.sync()
        f.close()
        assert Path(f.name).read_bytes() == b"DICM" * 10
        _wait_ready(pool, 2)  # taken: replaced
        assert len(list(tmp_path.iterdir())) == 3
    finally:
        pool.stop()
    assert [p.name for p in tmp_path.iterdir()] == [Path(f.name).name]  # the spares not taken are removed
    assert take_spare(tmp_path) is None  # unregistered


def test_without_a_pool_or_a_ready_spare_the_guard_creates_its_own_file(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    pool = SpareFiles(tmp_path, "node-a", keep=0).start()  # never has one ready
    try:
        f = GuardedTempFile(dir=str(tmp_path), suffix=".dcm")
        g = GuardedTempFile(dir=str(other), suffix=".dcm")
        assert not Path(f.name).name.startswith("spare-") and Path(f.name).parent == tmp_path
        assert Path(g.name).parent == other
        f.close()
        g.close()
    finally:
        pool.stop()


def test_start_removes_this_nodes_spares_left_by_dead_processes_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live_pid = os.getppid()  # the test runner's parent: alive
    left = {
        f"spare-node_a-{dead_pid}-x1.dcm": False,  # this node, process gone: removed
        f"spare-node_a-{live_pid}-x2.dcm": True,  # this node, another live process (a receiver): kept
        f"spare-node_b-{dead_pid}-x3.dcm": True,  # another node sharing the folder: not ours to judge
        "tmpabcd.dcm": True,  # an ordinary receive file
    }
    for name in left:
        (tmp_path / name).write_bytes(b"")
    pool = SpareFiles(tmp_path, "node-a", keep=0).start()
    pool.stop()
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in left.items() if kept}


def test_an_unwritable_folder_gives_no_spares_and_the_guard_fails_as_before(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    pool = SpareFiles(missing, "node-a", keep=2).start()
    try:
        time.sleep(0.1)
        assert take_spare(missing) is None
        f = GuardedTempFile(dir=str(missing))
        assert f.failed  # the guard's own refusal (0xA700 at the SCP), as without spares
    finally:
        pool.stop()
    assert spare_files._key(missing) not in spare_files._pools
