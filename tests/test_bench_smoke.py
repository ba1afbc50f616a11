"""Benchmarks are not tests: this only checks that ``python -m bench all --quick`` still runs end to end (real
storescu, storescp, Orthanc, dcm2niix and the node) and writes a JSON table with figures in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_runs_and_writes_rows(tmp_path: Path, data: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), DICOM_NODE_TEST_DATA=str(data))
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((tmp_path / "bench.json").read_text())
    rows = doc["rows"]
    groups = {r["group"] for r in rows}
    assert {"ingest", "overhead", "conversion", "memory"} <= groups, groups
    for r in rows:
        assert set(r) >= {"group", "name", "value", "unit", "reference", "ref_value", "ratio", "note"}
    measured = [r for r in rows if r["value"] is not None]
    assert measured and all(r["value"] > 0 for r in measured)
    # every figure with a reference has its ratio, computed from the two values of the same run (node/reference
    # for rates, reference/node for times: bench/common.py row)
    referenced = [r for r in rows if r["reference"] is not None]
    assert referenced
    for r in referenced:
        assert r["value"] is not None and r["ref_value"], r
        assert r["ratio"] is not None, r
        assert min(abs(r["ratio"] - r["value"] / r["ref_value"]),
                   abs(r["ratio"] - r["ref_value"] / r["value"])) <= 1e-9 * max(1.0, r["ratio"]), r
    assert (tmp_path / "bench.png").stat().st_size > 0
