"""The external programs the tests drive (dcmtk, dciodvfy, dcm2niix...): found, or a clear failure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCMTK_TOOLS = {"storescu", "echoscu", "storescp", "findscu", "movescu", "getscu", "dcmdump"}


def require_tool(name: str) -> str:
    """The path of an external program the test needs; fail (never skip) when it is not installed.

    dcmtk's programs are taken from /usr/bin: pynetdicom installs Python look-alikes with the same names
    (storescu, echoscu...) that may come first on PATH, and the tests mean the real dcmtk peers.
    """
    if name in DCMTK_TOOLS and Path("/usr/bin", name).exists():
        return str(Path("/usr/bin", name))
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup.sh (it installs dcmtk, orthanc, dicom3tools)",
                    pytrace=False)
    return path


def stop_started(proc: "subprocess.Popen | None", timeout: float = 10) -> None:
    """Stop a server process the test started itself (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
