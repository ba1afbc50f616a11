"""What the HTTP side costs the SCP: ingest of a CT copy into ``dicom-node serve`` without the HTTP side, with it
idle, and with a scraper polling ``/metrics`` and ``/`` every second (and, as a stress row, ten times a second).

``python -m bench http_cost``. The reference is the node without the HTTP side, measured in the same run,
alternately; a ratio near 1 means the HTTP side costs ingest nothing. The scrape's own latency (median, while
ingest runs) is reported too, and the CPU time the SCP's own process spends per instance (steadier than throughput
on a busy machine: the HTTP side is a process of its own, so this should not move).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .common import alternate, free_port, median, push, repeated_ct, row

GROUP = "http_cost"


class Target:
    """A fresh node per measurement; ``http`` on or off; ``poll`` seconds between scrapes (None: no scraper)."""

    def __init__(self, base: Path, files: list[Path], http: bool, poll: float | None) -> None:
        self.base, self.files, self.http, self.poll = base, files, http, poll
        self.scrape_ms: list[float] = []
        self.scp_cpu_ms: list[float] = []  # CPU of the SCP's process per instance, one value per measurement

    def __call__(self) -> float:
        from support.nodeproc import NodeProcess, node_config

        work = Path(tempfile.mkdtemp(dir=self.base))
        extra: dict[str, Any] = {}
        port = free_port()
        if self.http:
            extra["http"] = {"host": "127.0.0.1", "port": port}
        node = NodeProcess(work, node_config(work, endpoint_url="http://127.0.0.1:9", pacs=None, quiet=600, **extra))
        node.start()
        stop = threading.Event()
        scraper = None
        try:
            if self.http:
                _wait_http(port)
            node.wait_worker_started()  # its imports would share the CPUs with the measurement
            if self.poll is not None:
                scraper = threading.Thread(target=self._scrape, args=(port, stop), daemon=True)
                scraper.start()
            cpu0 = _cpu_seconds(node.proc.pid)
            rate = len(self.files) / push(node.port, [self.files], "AINODE", nodelay=True)
            self.scp_cpu_ms.append((_cpu_seconds(node.proc.pid) - cpu0) * 1000 / len(self.files))
        finally:
            stop.set()
            if scraper is not None:
                scraper.join(timeout=10)
            node.kill()
            shutil.rmtree(work, ignore_errors=True)
        return rate

    def _scrape(self, port: int, stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                for path in ("/metrics", "/"):
                    t0 = time.perf_counter()
                    client.get(f"http://127.0.0.1:{port}{path}").raise_for_status()
                    if path == "/metrics":
                        self.scrape_ms.append((time.perf_counter() - t0) * 1000)
                stop.wait(self.poll)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_http(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the HTTP side did not answer")


def run(quick: bool) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="bench-http-"))
    try:
        files = repeated_ct(base / "ct", 2 if quick else 8)
        targets = {"off": Target(base, files, False, None), "idle": Target(base, files, True, None),
                   "1/s": Target(base, files, True, 1.0), "10/s": Target(base, files, True, 0.1)}
        if not quick:  # a discarded first run: page cache, imports and the like favour whoever goes second
            Target(base, files, False, None)()
        got = alternate({k: t for k, t in targets.items()}, 1 if quick else 3)
        ref = median(got["off"])
        note = f"{len(files)} CT instances, 1 association; median of {len(got['off'])}"
        rows = [row(GROUP, "ingest, no HTTP side", ref, "inst/s", note=note)]
        for key, label in (("idle", "ingest, HTTP side on, idle"), ("1/s", "ingest, scraper every 1 s"),
                           ("10/s", "ingest, scraper every 0.1 s (stress)")):
            scrape = targets[key].scrape_ms
            extra = f"; /metrics answered in {median(scrape):.0f} ms (median of {len(scrape)})" if scrape else ""
            rows.append(row(GROUP, label, median(got[key]), "inst/s", reference="node without HTTP side",
                            ref_value=ref, note=note + extra))
        # CPU time is steadier than throughput on a busy machine: the SCP process's own ms per instance
        cpu_ref = median(targets["off"].scp_cpu_ms)
        rows.append(row(GROUP, "SCP CPU per instance, no HTTP side", cpu_ref, "ms", note=note))
        for key, label in (("idle", "SCP CPU per instance, HTTP side idle"),
                           ("1/s", "SCP CPU per instance, scraper every 1 s"),
                           ("10/s", "SCP CPU per instance, scraper every 0.1 s")):
            rows.append(row(GROUP, label, median(targets[key].scp_cpu_ms), "ms", reference="node without HTTP side",
                            ref_value=cpu_ref, note=note, higher_is_better=False))
        return rows
    finally:
        shutil.rmtree(base, ignore_errors=True)
