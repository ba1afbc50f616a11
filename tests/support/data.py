"""Where the repository and the real DICOM test data are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
