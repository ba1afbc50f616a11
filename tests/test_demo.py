"""``dicom-node demo``, the first command a newcomer runs, as a real process: what it prints under "findings:" is
every sentence the model answered (boxed or not), read from its emulator's request log while it keeps running."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.data import REPO

pytestmark = pytest.mark.slow

READY = "running; Ctrl-C to stop"


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """The demo's output lines up to the one holding ``marker`` (it goes on running after that)."""
    lines: "queue.Queue[str | None]" = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"the demo never printed {marker!r}:\n" + "\n".join(seen[-60:]))


def printed_findings(lines: list[str]) -> list[str]:
    """The ``  - sentence`` lines under "findings:"."""
    start = lines.index("findings:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("  - "):
            break
        out.append(line[4:])
    return out


def test_the_demo_prints_every_finding_the_model_answered(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "demo", "--out", str(tmp_path / "out"),
                             "--keep-running"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until(proc, READY, 240)
        (emulator,) = [m.group(1) for line in lines if (m := re.match(r"emulator:\s+(http://\S+)/score", line))]
        log = httpx.get(f"{emulator}/_emulator/requests", timeout=30).json()["requests"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    answered = [r for r in log if r["status"] == 200]
    assert len(answered) == 1, log
    said = json.loads(answered[0]["reply"][0]["output"])  # [[sentence, boxes or null], ...] as the model sent it
    assert any(boxes for _, boxes in said) and any(not boxes for _, boxes in said), said
    findings = printed_findings(lines)
    assert sorted(findings) == sorted({text for text, _ in said}), "\n".join(lines)
    assert proc.returncode == 0, "Ctrl-C ends the demo cleanly"
