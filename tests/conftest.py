"""Shared fixtures: where the real DICOM test data lives, and the external tools the tests drive."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Property-based tests: the same examples on every run by default, so a landing gate cannot flake;
# HYPOTHESIS_PROFILE=explore draws new ones each run (how new bad inputs are looked for).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def data_dir() -> Path:
    """``$DICOM_NODE_TEST_DATA`` or ``../shared/data`` beside the repository; a clear failure when absent."""
    env = os.environ.get("DICOM_NODE_TEST_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "cxr").is_dir():
        pytest.fail(
            f"test data not found at {path}: set DICOM_NODE_TEST_DATA to the folder holding cxr/, ct/, mr/ ...",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()


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
