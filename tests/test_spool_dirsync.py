"""node.store.spool.DirSyncer: concurrent renames into one folder share its fsync, and none is acknowledged early."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from node.store import spool


def test_each_caller_is_covered_by_an_fsync_that_began_after_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[tuple[float, float, Path]] = []
    real = spool.fsync_dir

    def slow_fsync_dir(path: Path) -> None:
        start = time.perf_counter()
        time.sleep(0.02)  # a slow disk: callers pile up behind a running fsync
        real(path)
        rounds.append((start, time.perf_counter(), path))

    monkeypatch.setattr(spool, "fsync_dir", slow_fsync_dir)
    syncer = spool.DirSyncer()
    folders = [tmp_path / "a", tmp_path / "b"]
    for f in folders:
        f.mkdir()
    calls: list[tuple[float, float, Path]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        folder = folders[i % 2]
        (folder / f"{i}.dcm").write_bytes(b"x")
        t0 = time.perf_counter()
        syncer.sync(folder)
        with lock:
            calls.append((t0, time.perf_counter(), folder))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 16
    for t0, t1, folder in calls:
        assert any(start >= t0 and end <= t1 and path == folder for start, end, path in rounds), (
            "a caller returned without an fsync of its folder that began after its call")
    assert len(rounds) < 16  # shared: fewer fsyncs than renames


def test_alone_it_fsyncs_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path] = []
    monkeypatch.setattr(spool, "fsync_dir", seen.append)
    syncer = spool.DirSyncer()
    syncer.sync(tmp_path)
    syncer.sync(tmp_path)
    assert seen == [tmp_path, tmp_path]


def test_an_fsync_error_reaches_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: Path) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(spool, "fsync_dir", fail)
    with pytest.raises(OSError):
        spool.DirSyncer().sync(tmp_path)
