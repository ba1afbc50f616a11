"""The short soak (bench/soak.py) in CI: 20 studies, 3 SIGKILLs, an endpoint outage and a PACS outage.

It fails on any acknowledged instance lost, any result not delivered, any result the PACS received twice (counted
per C-STORE at Orthanc), and any result more than the studies sent call for (a study decided twice, an SR without
its GSPS): each chest X-ray study must have exactly one SR and one GSPS at the PACS per decision. The long soak is
``python -m bench soak --studies N`` by hand. The fast tests below feed the soak's judge the PACS logs those
failures would leave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from pydicom.dataset import Dataset

from support.data import REPO
from support.orthanc import Received


def judge() -> Callable:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench.soak import judge_results

    return judge_results


def sr(evidence: list[str], predecessor: str | None = None) -> Dataset:
    """An SR as the PACS holds it: its evidence (SOP Instance UIDs of the study) and the SR it revises."""
    def refs(uids: list[str]) -> list[Dataset]:
        item = Dataset()
        series = Dataset()
        series.ReferencedSOPSequence = [Dataset() for _ in uids]
        for ref, uid in zip(series.ReferencedSOPSequence, uids):
            ref.ReferencedSOPInstanceUID = uid
        item.ReferencedSeriesSequence = [series]
        return [item]

    ds = Dataset()
    ds.CurrentRequestedProcedureEvidenceSequence = refs(evidence)
    if predecessor:
        ds.PredecessorDocumentsSequence = refs([predecessor])
    return ds


def pacs_log(*stores: tuple[str, str, str]) -> list[Received]:
    return [Received(sop, study, modality, "DicomProtocol") for sop, study, modality in stores]


# SOP Instance UIDs of results (SR*, PR*, X) and of source images (A*, B*)
SR1B = "1.2.1.5"
SR1 = "1.2.1.1"
PR1 = "1.2.1.2"
SR2 = "1.2.2.1"
PR2 = "1.2.2.2"
SR3 = "1.2.1.3"
PR3 = "1.2.1.4"
A1 = "1.2.9.1"
A2 = "1.2.9.2"
B1 = "1.2.9.3"
B2 = "1.2.9.4"
X = "1.2.3.1"

GOOD = [(SR1, "A", "SR"), (PR1, "A", "PR"), (SR2, "B", "SR"), (PR2, "B", "PR")]
SRS = {SR1: sr([A1, A2]), SR2: sr([B1, B2])}


def test_judge_passes_one_sr_and_one_gsps_per_study() -> None:
    got = judge()(["A", "B"], ["C"], pacs_log(*GOOD), SRS.__getitem__)
    assert (got["expected"], got["delivered"], got["missing"], got["extra"], got["duplicated"]) == (4, 4, 0, 0, 0)
    assert got["wrong"] == {}


@pytest.mark.parametrize("case, log, srs, flagged", [
    ("a result sent twice", GOOD + [(PR1, "A", "PR")], SRS, "duplicated"),
    ("a study decided twice", GOOD + [(SR3, "A", "SR"), (PR3, "A", "PR")],
     {**SRS, SR3: sr([A1, A2])}, "extra"),
    ("a revision without a new instance", GOOD + [(SR3, "A", "SR"), (PR3, "A", "PR")],
     {**SRS, SR3: sr([A1, A2], predecessor=SR1)}, "extra"),
    ("two SRs and no GSPS", [(SR1, "A", "SR"), (SR1B, "A", "SR")] + GOOD[2:],
     {**SRS, SR1B: sr([A1, A2])}, "extra"),
    ("a GSPS missing", GOOD[:3], SRS, "missing"),
    ("a result for a study no rule takes", GOOD + [(X, "C", "SR")], SRS, "extra"),
])
def test_judge_fails_every_result_too_many_or_too_few(case: str, log: list, srs: dict, flagged: str) -> None:
    got = judge()(["A", "B"], ["C"], pacs_log(*log), srs.__getitem__)
    assert got[flagged] >= 1, (case, got)
    assert flagged == "duplicated" or got["wrong"], (case, got)


def test_judge_takes_a_study_revised_by_a_late_instance_as_two_decisions() -> None:
    """A late instance re-opens a study: a second SR naming the first, with the new instance in its evidence."""
    log = GOOD + [(SR3, "A", "SR"), (PR3, "A", "PR")]
    srs = {**SRS, SR1: sr([A1]), SR3: sr([A1, A2], predecessor=SR1)}
    got = judge()(["A", "B"], [], pacs_log(*log), srs.__getitem__)
    assert (got["expected"], got["delivered"], got["extra"], got["revised"], got["wrong"]) == (6, 6, 0, 1, {})


def test_soak_report_fails_on_an_extra_result() -> None:
    judge()
    from bench.soak import failed

    results = judge()(["A", "B"], [], pacs_log(*GOOD, (SR3, "A", "SR"), (PR3, "A", "PR")),
                      {**SRS, SR3: sr([A1, A2])}.__getitem__)
    results.pop("wrong")
    report = {"instances": {"lost": 0, "never_acknowledged": 0}, "results": results}
    assert failed(report) == ["2 result(s) more than the studies sent call for"]


@pytest.mark.faults
@pytest.mark.slow
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
    results = report["results"]
    assert results["expected"] >= 2 * 14  # 14 of the 20 studies are chest X-rays: an SR and a GSPS each
    assert results["delivered"] == results["expected"] and results["extra"] == 0
    assert results["cstores_max"] == 1 and results["duplicated"] == 0
    assert report["wrong_results"] == {}
    assert report["instances"]["lost"] == 0 and report["instances"]["acknowledged"] == report["instances"]["total"]
