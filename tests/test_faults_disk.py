"""Faults: the spool's file system fills up (a real 8 MiB tmpfs mounted as the node's storage directory).

The node's free-space floor is off (``min_free_disk_mb: 0``), so the real ENOSPC paths are exercised: the
chunked receive file, the rename, the database commit. The SCP must answer 0xA700 (out of resources) for what
it could not store, never 0x0000; every instance it acknowledged is in the database and the spool, whole; no
row points to a half-written file. Mounting needs root (as here and in CI): without it the test fails with a
message, it is never skipped silently.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

from support.dcmtk import storescu
from support.nodekit import db_rows, spool_files
from support.nodeproc import NodeProcess, node_config
from support.studies import copy_series

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs at ``tmp_path/var``, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a small tmpfs and needs root (run it as root, as CI does)",
                    pytrace=False)
    mnt = tmp_path / "var"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test: {out.stderr.strip()}", pytrace=False)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_spool_answers_out_of_resources_and_keeps_what_it_acknowledged(tmp_path: Path, data: Path,
                                                                             small_fs: Path) -> None:
    files = copy_series(sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[:30], tmp_path / "ct",
                        patient_id="FULL-1")  # ~15 MiB: about half fits
    node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url="http://127.0.0.1:9/score", pacs=None,
                                             quiet=60))
    assert node.config["node"]["storage_dir"] == str(small_fs)
    node.start()
    try:
        proc = storescu("127.0.0.1", node.port, files, extra=["-v", "-x="])
        out = proc.stdout + proc.stderr
        statuses = re.findall(r"Received Store Response \(([^)]*)\)", out)
        ok = statuses.count("Success")
        refused = [s for s in statuses if s != "Success"]
        assert ok > 0, out[-3000:]
        assert refused and all("OutOfResources" in s for s in refused), sorted(set(statuses))
        assert ok + len(refused) <= len(files)  # storescu stops at the first refusal
        # Fill what is left but 64 KiB, then send one more: now the write of the received data set itself
        # meets ENOSPC (not only the free-space check before the rename).
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        filler = small_fs / "filler"
        filler.write_bytes(b"\0" * max(0, free - 64 * 1024))
        late = storescu("127.0.0.1", node.port, files[-1:], extra=["-v", "-x="])
        late_status = re.findall(r"Received Store Response \(([^)]*)\)", late.stdout + late.stderr)
        filler.unlink()
        assert late_status == ["Refused: OutOfResources"], late.stdout + late.stderr
        assert "Traceback" not in node.logs(), "the reactor thread must not die on ENOSPC"
        assert not [p for p in (small_fs / "tmp").iterdir() if p.stat().st_size > 0], \
            "the refused partial file is removed (only empty files made ahead by node.dicom.spare_files stay)"
        acked = set()
        for sent, status in zip(re.findall(r"Sending file: (\S+)", out), statuses):
            if status == "Success":
                acked.add(str(pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID))
        rows = db_rows(node, "SELECT sop_instance_uid, path, size_bytes FROM instances")
        assert {r[0] for r in rows} == acked, "the database holds exactly what was acknowledged"
        for uid, path, size in rows:
            assert Path(path).stat().st_size == size
            assert pydicom.dcmread(path).SOPInstanceUID == uid  # whole, pixels included
        assert len(spool_files(node)) == len(acked), "no file in the spool that the database does not know"
        assert "0xA700" in node.logs() or "out of resources" in node.logs().lower()
        # the node is still alive and answers
        assert node.proc.poll() is None
    finally:
        node.stop()
    print(f"\ndisk full: {ok} acknowledged and kept, {len(refused)} refused with 0xA700 ({refused[0]})")
