"""The short soak (bench/soak.py) in CI: 20 studies, 3 SIGKILLs, an endpoint outage and a PACS outage.

It fails on any acknowledged instance lost, any result not delivered, or any result the PACS received twice
(counted per C-STORE at Orthanc). The long soak is ``python -m bench soak --studies N`` by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import REPO

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_short_soak_loses_nothing_and_duplicates_nothing(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "soak.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), DICOM_NODE_TEST_DATA=str(data))
    proc = subprocess.run([sys.executable, "-m", "bench", "soak", "--studies", "20", "--senders", "3", "--kills", "3",
                           "--endpoint-down", "20", "--pacs-down", "30", "--timeout", "240", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert len([e for e in report["chaos"] if e.startswith("SIGKILL")]) == 3
    assert report["longest_outage_seconds"]["pacs"] >= 30 and report["longest_outage_seconds"]["endpoint"] >= 20
    assert report["results"]["expected"] > 0
    assert report["results"]["delivered"] == report["results"]["expected"]
    assert report["results"]["cstores_max"] == 1
    assert report["instances"]["lost"] == 0 and report["instances"]["acknowledged"] == report["instances"]["total"]
