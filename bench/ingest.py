"""Ingest: dcmtk storescu pushes the 64-slice CT (and a ~1,000-instance copy of it) into the node's SCP, dcmtk
storescp and Orthanc, over 1 and over 4 associations; plus t_fsync, the durable limit and the node's peak RSS.

Each target is started fresh and empty for each measurement (its start is not timed); the figure is the wall
time of the storescu processes. The senders run with TCP_NODELAY=1 unless the row says "Nagle": then neither
storescu nor the reference receiver has it (Debian's dcmtk default), while the node keeps its own settings.

The node runs with its configured default of ``node.receivers`` (receiver processes on one port); set
``BENCH_NODE_RECEIVERS=N`` in the environment to measure another count (the rows then say so).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .common import (OneByOne, alternate, ct_files, dcmtk_env, free_port, median, push, repeated_ct, row, size_mb, split,
                     tool, wait_port)

GROUP = "ingest"
RECEIVERS = os.environ.get("BENCH_NODE_RECEIVERS")  # None: the node's default
RECEIVERS_NOTE = f"; node.receivers {RECEIVERS}" if RECEIVERS else ""


class NodeTarget:
    """The real node (``dicom-node serve``), fresh storage each time."""

    name = "node"
    aet = "AINODE"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.peak_rss_kb: dict[str, int] = {}

    def __call__(self, groups: Sequence[Sequence[Path]], nodelay: bool) -> float:
        from support.nodeproc import NodeProcess, node_config

        work = Path(tempfile.mkdtemp(dir=self.base))
        # The quiet timer is long: only receiving is measured (the CT matches no rule anyway).
        cfg = node_config(work, endpoint_url="http://127.0.0.1:9", pacs=None, quiet=600)
        if RECEIVERS:
            cfg["node"]["receivers"] = int(RECEIVERS)
        node = NodeProcess(work, cfg)
        node.start()
        try:
            node.wait_worker_started()  # its imports would otherwise share the CPUs with the measurement
            elapsed = push(node.port, groups, self.aet, nodelay=nodelay)
            self.peak_rss_kb = _peak_rss(node.proc.pid)
        finally:
            node.kill()  # measured already; a graceful drain only costs the benchmark time
            shutil.rmtree(work, ignore_errors=True)
        return elapsed


class StorescpTarget:
    """dcmtk storescp writing every instance to disk (``--fork`` when several associations come at once)."""

    name = "storescp"
    aet = "STORESCP"

    def __init__(self, base: Path) -> None:
        self.base = base

    def __call__(self, groups: Sequence[Sequence[Path]], nodelay: bool) -> float:
        work = Path(tempfile.mkdtemp(dir=self.base))
        port = free_port()
        cmd = [tool("storescp"), "-aet", self.aet, "-od", str(work)]
        if len(groups) > 1 and not isinstance(groups, OneByOne):
            cmd.append("--fork")
        proc = subprocess.Popen([*cmd, str(port)], env=dcmtk_env(nodelay), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(port)
            elapsed = push(port, groups, self.aet, nodelay=nodelay)
            stored = sum(1 for _ in work.iterdir())
            expected = sum(len(g) for g in groups)
            if stored != expected:
                raise RuntimeError(f"storescp stored {stored} of {expected} instances")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            shutil.rmtree(work, ignore_errors=True)
        return elapsed


class OrthancTarget:
    """Debian's Orthanc (through tests/support/orthanc.py), fresh storage each time."""

    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self, base: Path) -> None:
        self.base = base

    def __call__(self, groups: Sequence[Sequence[Path]], nodelay: bool) -> float:
        from support.orthanc import Orthanc

        work = Path(tempfile.mkdtemp(dir=self.base))
        saved = os.environ.get("TCP_NODELAY")
        os.environ.update(dcmtk_env(nodelay))  # Orthanc's dcmtk reads the same variable
        if not nodelay:
            os.environ.pop("TCP_NODELAY", None)
        pacs = Orthanc(work, aet=self.aet)
        try:
            pacs.start()
            elapsed = push(pacs.dicom_port, groups, self.aet, nodelay=nodelay)
        finally:
            pacs.stop(graceful=False)  # measured already
            if saved is None:
                os.environ.pop("TCP_NODELAY", None)
            else:
                os.environ["TCP_NODELAY"] = saved
            shutil.rmtree(work, ignore_errors=True)
        return elapsed


def _peak_rss(pid: int) -> dict[str, int]:
    """VmHWM (kB) of the serve process and of each child (the worker, receivers 1..N-1)."""
    out = {"serve": _vmhwm(pid)}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for i, child in enumerate(children):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        out["worker" if b"worker" in cmdline else f"receiver{i}"] = _vmhwm(int(child))
    return out


def _vmhwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def t_fsync(sample: Path, base: Path, runs: int) -> float:
    """Median seconds of fsync(file) + rename + fsync(directory) for one instance-sized file."""
    data = sample.read_bytes()
    folder = base / "fsync"
    folder.mkdir(exist_ok=True)
    times = []
    for i in range(runs):
        tmp = folder / f".{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            t0 = time.perf_counter()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{i}.dcm")
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - t0)
    shutil.rmtree(folder, ignore_errors=True)
    return median(times)


def run(quick: bool) -> list[dict[str, Any]]:
    runs = 1 if quick else 3
    base = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    rows: list[dict[str, Any]] = []
    try:
        datasets = {"CT 64": ct_files()}
        if not quick:
            datasets["CT x16 (1024)"] = repeated_ct(Path(tempfile.gettempdir()) / "bench-ct-1024", 16)
        node, storescp, orthanc = NodeTarget(base), StorescpTarget(base), OrthancTarget(base)
        targets: list[Callable[..., float]] = [node, storescp, orthanc]
        peak: dict[str, int] = {}
        sample = ct_files()[0]
        fsyncs: list[float] = []
        cases = [(label, files, n, True) for label, files in datasets.items() for n in (1, 4)]
        if not quick:
            cases.append(("CT 64", datasets["CT 64"], 1, False))  # Nagle-bound sender: ~40 ms per instance
        cases.append(("CT 64", datasets["CT 64"], 0, True))  # one association per instance, one after the other
        for label, files, n, nodelay in cases:
            groups = split(files, n) if n else OneByOne([f] for f in files)
            fns = {t.name: (lambda t=t: t(groups, nodelay)) for t in targets}
            # t_fsync is sampled between the runs too: the disk is shared and its fsync time drifts
            fns["t_fsync"] = lambda: t_fsync(sample, base, 5)
            times = alternate(fns, runs)
            tf = median(times.pop("t_fsync"))
            fsyncs.append(tf)
            if label.endswith("(1024)") and node.peak_rss_kb:
                for k, v in node.peak_rss_kb.items():
                    peak[k] = max(peak.get(k, 0), v)
            count, mb = len(files), size_mb(files)
            rate = {name: count / median(ts) for name, ts in times.items()}
            mbs = {name: mb / median(ts) for name, ts in times.items()}
            sender = "TCP_NODELAY=1" if nodelay else "Nagle on (Debian default)"
            case = f"{label}, {n} assoc, sender {sender}" if n else f"{label}, 1 assoc per instance, sender {sender}"
            for ref in ("storescp", "orthanc"):
                ref_label = ref + (" --fork" if ref == "storescp" and n > 1 else "")
                rows.append(row(GROUP, f"{ref_label}: {case}", rate[ref], "inst/s",
                                note=f"{mbs[ref]:.1f} MB/s; reference"))
            for ref in ("storescp", "orthanc"):
                rows.append(row(GROUP, f"node vs {ref}: {case}", rate["node"], "inst/s", reference=ref,
                                ref_value=rate[ref],
                                note=f"node {mbs['node']:.1f} MB/s vs {mbs[ref]:.1f} MB/s" + RECEIVERS_NOTE))
            if n == 1 and nodelay:
                durable = 1.0 / (1.0 / rate["storescp"] + tf)
                rows.append(row(GROUP, f"node vs durable limit: {case}", rate["node"], "inst/s",
                                reference="1/(1/storescp + t_fsync)", ref_value=durable,
                                note=f"t_fsync {tf * 1000:.2f} ms in this case's runs; target >= 0.9x"))
            if n == 1 and not nodelay:
                rows.append(row(GROUP, f"node, Nagle-bound sender: {case}", rate["node"], "inst/s",
                                note="the node must not pay ~40 ms per instance"))
        rows.insert(0, row(GROUP, "t_fsync (fsync + rename + dir fsync, 1 CT instance)", median(fsyncs) * 1000, "ms",
                           note=f"median over the cases, from {min(fsyncs) * 1000:.2f} to {max(fsyncs) * 1000:.2f} ms; "
                                "same filesystem as the spool"))
        if peak:
            rows.append(row("memory", "peak RSS serve (SCP) while ingesting 1024 instances",
                            peak.get("serve", 0) / 1024, "MiB", note="VmHWM"))
            rows.append(row("memory", "peak RSS worker while ingesting 1024 instances",
                            peak.get("worker", 0) / 1024, "MiB", note="VmHWM"))
            rows.append(row("memory", "peak RSS node total (serve + worker + receivers)",
                            sum(peak.values()) / 1024, "MiB", note="sum of VmHWM" + RECEIVERS_NOTE))
        elif quick:
            rows.append(row("memory", "peak RSS node total (serve + worker), CT 64",
                            sum(node.peak_rss_kb.values()) / 1024, "MiB", note="VmHWM; quick mode: 64 instances"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows
