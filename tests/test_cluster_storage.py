"""The storage folder shared by a cluster's nodes: concurrent writers of one file never leave a torn file.

Two nodes on two hosts can run writers with the same process id; a temporary name made of the pid alone was then
the same file for both (one's rename took the other's half-written bytes, or found its file gone).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from node.store import spool


def test_concurrent_writers_with_the_same_pid_never_tear_a_result_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool.os, "getpid", lambda: 4242)  # two hosts, one pid
    dst = tmp_path / "results" / "1.2.3" / "1.2.3.4.dcm"
    payloads = [bytes([65 + i]) * (256 * 1024) for i in range(2)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(40):
                spool.write_durably(dst, data)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert dst.read_bytes() in payloads
    assert not list(dst.parent.glob(".*.tmp")), "no temporary file left behind"
