"""Shared pieces of the benchmarks: result rows, alternating runs, test data, the real peers.

Every figure is the median of several runs; a figure and its reference are measured alternately in the same
run (A, B, A, B, ...) so that a machine that slows down mid-run slows both.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DICOM_NODE_TEST_DATA", REPO.parent / "shared" / "data"))
CT_DIR = DATA / "ct" / "chest_ct_5mm_64slices"
MR_DIR = DATA / "mr" / "prostate_adc_20slices"

if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # tests/support: the harnesses the e2e tests use

from support.ports import free_port  # noqa: E402,F401  (one free_port for tests and benchmarks)


def row(group: str, name: str, value: float | None, unit: str, *, reference: str | None = None,
        ref_value: float | None = None, note: str = "", higher_is_better: bool = True) -> dict[str, Any]:
    """One result row. ``ratio`` is node/reference for rates (higher is better) and reference/node for times,
    so a ratio above 1 always means the node is better."""
    ratio = None
    if value is not None and ref_value:
        ratio = value / ref_value if higher_is_better else (ref_value / value if value else None)
    return {"group": group, "name": name, "value": value, "unit": unit, "reference": reference,
            "ref_value": ref_value, "ratio": ratio, "note": note}


def alternate(fns: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """Run every function ``runs`` times, round-robin; the measured values per name."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(runs):
        names = list(fns) if i % 2 == 0 else list(reversed(fns))  # no one always goes first
        for name in names:
            out[name].append(fns[name]())
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tool(name: str) -> str:
    """A real external program (dcmtk from /usr/bin: pynetdicom installs Python look-alikes on PATH)."""
    for candidate in (Path("/usr/bin") / name, Path("/usr/sbin") / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run scripts/setup.sh")
    return found


def dcmtk_env(nodelay: bool) -> dict[str, str]:
    """Debian's dcmtk turns Nagle's algorithm off only when TCP_NODELAY=1 is in its environment."""
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    return env


def storescu_cmd(port: int, files: Sequence[Path], called_ae: str) -> list[str]:
    return [tool("storescu"), "-aet", "BENCH", "-aec", called_ae, "127.0.0.1", str(port), *map(str, files)]


class OneByOne(list):
    """Groups to send one after the other (one association each, as a modality that opens one per instance)."""


def push(port: int, groups: Sequence[Sequence[Path]], called_ae: str, *, nodelay: bool) -> float:
    """Send each group of files over its own association (all at once, or one after the other for
    :class:`OneByOne`); wall seconds until the last ends."""
    env = dcmtk_env(nodelay)
    t0 = time.perf_counter()
    if isinstance(groups, OneByOne):
        for g in groups:
            proc = subprocess.run(storescu_cmd(port, g, called_ae), env=env, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"storescu failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        return time.perf_counter() - t0
    procs = [subprocess.Popen(storescu_cmd(port, g, called_ae), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) for g in groups]
    failures = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            failures.append(err.decode(errors="replace")[-2000:])
    elapsed = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"storescu failed: {failures[0]}")
    return elapsed


def split(files: Sequence[Path], n: int) -> list[list[Path]]:
    """``files`` in ``n`` interleaved groups of nearly equal size."""
    return [list(files[i::n]) for i in range(n)]


def ct_files() -> list[Path]:
    files = sorted(CT_DIR.glob("*.dcm"))
    if len(files) != 64:
        raise RuntimeError(f"{CT_DIR}: expected the 64-slice CT, found {len(files)} files")
    return files


def repeated_ct(dst: Path, copies: int) -> list[Path]:
    """The 64-slice CT ``copies`` times, each copy a new series with new SOP Instance UIDs (one new study)."""
    import pydicom
    from pydicom.uid import generate_uid

    marker = dst / f".complete-{copies}"
    if marker.exists():
        return sorted(dst.glob("*/*.dcm"))
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    study = generate_uid()
    sources = [pydicom.dcmread(f) for f in ct_files()]
    out: list[Path] = []
    for c in range(copies):
        series = generate_uid()
        folder = dst / f"{c:03d}"
        folder.mkdir()
        for k, ds in enumerate(sources):
            sop = generate_uid()
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.SeriesNumber = 100 + c
            path = folder / f"{k:03d}.dcm"
            ds.save_as(path)
            out.append(path)
    marker.touch()
    return out


def size_mb(files: Sequence[Path]) -> float:
    return sum(f.stat().st_size for f in files) / 1e6


def wait_port(port: int, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")
