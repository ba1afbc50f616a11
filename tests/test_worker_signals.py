"""serve stops its worker with SIGINT: the stop must work at every moment of the worker's start.

A node started as a background shell job (``dicom-node serve &``, a CI script's ``&``) inherits SIGINT ignored, and
its children inherited that too: a SIGINT reaching the worker before Huey set its handlers was lost, and ``serve``
waited a whole lease (60 s) before killing it (``test_a_silent_tcp_connection_does_not_hold_the_shutdown`` failed
only in full, backgrounded runs).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def test_a_worker_started_with_sigint_ignored_stops_on_sigint_at_any_moment_of_its_start(tmp_path: Path) -> None:
    cfg = {"node": {"storage_dir": str(tmp_path / "var"), "host": "127.0.0.1", "port": 11999},
           "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:9/score", "auth": "none"}},
           "rules": [{"name": "r", "match": {"Modality": "CR"}, "endpoint": "cxr", "send_to": []}]}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(cfg))
    late = []
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5, 2.5):  # from the imports through the start to a running consumer
        # trap '' INT: SIGINT ignored, as a shell starts a background job; exec keeps that (and the pid)
        proc = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" -m node.cli worker --config "$1"',
                                 sys.executable, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            late.append(delay)
            proc.kill()
            proc.wait()
    assert late == [], f"a SIGINT this many seconds after the start did not stop the worker: {late}"
