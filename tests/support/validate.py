"""Independent validation of the DICOM objects the node writes (dicom3tools' dciodvfy)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .tools import require_tool


def dciodvfy_errors(path: Path | str) -> list[str]:
    """Run ``dciodvfy -new`` on one file and return its Error lines (warnings are allowed)."""
    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    return [line for line in out.splitlines() if line.startswith("Error")]


def assert_valid_dicom(path: Path | str) -> None:
    """Fail with dciodvfy's own Error lines when the object is not valid."""
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)
