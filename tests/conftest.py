"""Shared fixtures: where the real DICOM test data lives; the harnesses themselves are in ``support/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.data import data_dir

# Property-based tests: the same examples on every run by default, so a landing gate cannot flake;
# HYPOTHESIS_PROFILE=explore draws new ones each run (how new bad inputs are looked for).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("deterministic", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def data() -> Path:
    return data_dir()
