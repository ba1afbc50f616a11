"""Study completion end to end: a real ``dicom-node serve``, pynetdicom as the modality (MPPS N-CREATE / N-SET) and as
the PACS's IAN (N-CREATE), dcmtk storescu for the images, the endpoint emulator, and a mini PACS that keeps the
results it receives.

One node (quiet timer 30 s, maximum wait 10 s) serves seven studies at once, each a scenario of the issue. What is
checked comes from outside the node: when the results reached the PACS (the received files' times) against when
the test sent the last instance or the MPPS; the node's own decision record then says which trigger fired. With a
30 s quiet timer, a result within 25 s of the last event cannot be the timer's.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.modality import ian, instance_refs, mpps_create, mpps_set
from support.nodekit import db_rows, send, wait_until
from support.nodeproc import NodeProcess, node_config
from support.pacs import MiniPACS
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

QUIET, MAX_WAIT = 30.0, 10.0
HOLD = 5.0  # how long a held study is watched for a (wrong) early result: longer than decision -> PACS takes here


def second_frontal(study: list[Path], out: Path) -> Path:
    """A second PA image of the study (same series, new SOP Instance UID): what an MPPS may list beyond PA + LL."""
    ds = pydicom.dcmread(study[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 2
    ds.save_as(out, enforce_file_format=True)
    return out


def results_for(folder: Path, study_uid: str) -> list[tuple[float, pydicom.Dataset]]:
    """(arrival time, header) of each result the PACS holds for the study."""
    out = []
    for f in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the mini PACS is still writing it: seen at the next look
            continue
        if str(ds.StudyInstanceUID) == study_uid:
            out.append((os.stat(f).st_mtime, ds))
    return out


class Scenario:
    def __init__(self, name: str, tmp: Path, data: Path, node: NodeProcess, pacs_dir: Path) -> None:
        self.name = name
        self.node = node
        self.pacs_dir = pacs_dir
        files = derive_cxr_study(tmp / name, data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                                 data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
        self.pa, self.ll = files
        self.pa2 = second_frontal(files, tmp / name / "03_frontal2.dcm")
        self.study = str(pydicom.dcmread(self.pa, stop_before_pixels=True).StudyInstanceUID)
        self.mpps = generate_uid()
        self.marks: dict[str, float] = {}

    def send(self, *files: Path) -> None:
        send(self.node, list(files))

    def mark(self, what: str) -> None:
        self.marks[what] = time.time()

    def results(self) -> list[tuple[float, pydicom.Dataset]]:
        return results_for(self.pacs_dir, self.study)

    def first_result(self, timeout: float = 25.0) -> float:
        got = wait_until(self.results, timeout, f"{self.name}: a result in the PACS", interval=0.1)
        return min(t for t, _ in got)

    def evidence(self) -> set[str]:
        """The images the SR in the PACS names as its evidence (what the model was given)."""
        wait_until(lambda: any(ds.Modality == "SR" for _, ds in self.results()), 25, f"{self.name}: the SR")
        return {str(i.ReferencedSOPInstanceUID) for _, ds in self.results() if ds.Modality == "SR"
                for ev in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for se in ev.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}

    @staticmethod
    def uid(path: Path) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    def decision(self) -> tuple[str, float, str, int]:
        rows = wait_until(lambda: db_rows(self.node, "SELECT trigger, decided_at, detail, discontinued FROM decisions "
                                                     "WHERE study_uid = ? ORDER BY version", self.study),
                          15, f"{self.name}: the node's decision record")
        return rows[0]


def mpps_before_last(s: Scenario) -> dict[str, Any]:
    """The MPPS completes before its last instance (the lateral): decided only when the lateral arrives, so the
    report is made with it."""
    port = s.node.port
    assert mpps_create(port, s.mpps, s.study) == 0x0000
    s.send(s.pa)
    assert mpps_set(port, s.mpps, "COMPLETED", instance_refs([s.pa, s.ll])) == 0x0000
    time.sleep(HOLD)
    early = s.results()
    s.mark("last instance")
    s.send(s.ll)
    return {"early": early, "result": s.first_result(), "after": s.marks["last instance"], "decision": s.decision(),
            "evidence": s.evidence(), "wanted": {s.uid(s.pa), s.uid(s.ll)}}


def mpps_first(s: Scenario) -> dict[str, Any]:
    """Precedence: PA + LL satisfy the rule's expected content, but the MPPS lists a third instance: it decides,
    when that instance arrives."""
    port = s.node.port
    assert mpps_create(port, s.mpps, s.study) == 0x0000
    s.send(s.pa, s.ll)
    assert mpps_set(port, s.mpps, "COMPLETED", instance_refs([s.pa, s.ll, s.pa2])) == 0x0000
    time.sleep(HOLD)
    early = s.results()
    s.mark("last instance")
    s.send(s.pa2)
    return {"early": early, "result": s.first_result(), "after": s.marks["last instance"], "decision": s.decision()}


def mpps_after(s: Scenario) -> dict[str, Any]:
    """Every instance is in, the MPPS is IN PROGRESS (which holds the study), then completes: decided at the N-SET."""
    port = s.node.port
    assert mpps_create(port, s.mpps, s.study) == 0x0000
    s.send(s.pa, s.ll)
    time.sleep(HOLD)
    early = s.results()
    s.mark("n-set")
    assert mpps_set(port, s.mpps, "COMPLETED", instance_refs([s.pa, s.ll])) == 0x0000
    return {"early": early, "result": s.first_result(), "after": s.marks["n-set"], "decision": s.decision()}


def never_comes(s: Scenario) -> dict[str, Any]:
    """The MPPS lists an instance that never comes: decided at the maximum wait, and the record says so."""
    port = s.node.port
    assert mpps_create(port, s.mpps, s.study) == 0x0000
    s.send(s.pa)
    s.mark("n-set")
    missing = (str(pydicom.dcmread(s.ll, stop_before_pixels=True).SOPClassUID), generate_uid(), generate_uid())
    assert mpps_set(port, s.mpps, "COMPLETED", [*instance_refs([s.pa]), missing]) == 0x0000
    return {"early": [], "result": s.first_result(), "after": s.marks["n-set"], "decision": s.decision()}


def by_ian(s: Scenario) -> dict[str, Any]:
    """The PACS's IAN lists the study's instances before they all came: decided when the last (the lateral) arrives."""
    assert ian(s.node.port, s.study, instance_refs([s.pa, s.ll])) == 0x0000
    s.send(s.pa)
    time.sleep(HOLD)
    early = s.results()
    s.mark("last instance")
    s.send(s.ll)
    return {"early": early, "result": s.first_result(), "after": s.marks["last instance"], "decision": s.decision(),
            "evidence": s.evidence(), "wanted": {s.uid(s.pa), s.uid(s.ll)}}


def by_expected_content(s: Scenario) -> dict[str, Any]:
    """No MPPS, no IAN: the rule's complete_when (PA and LL) decides the study when the lateral arrives."""
    s.send(s.pa)
    time.sleep(HOLD)
    early = s.results()
    s.mark("last instance")
    s.send(s.ll)
    return {"early": early, "result": s.first_result(), "after": s.marks["last instance"], "decision": s.decision(),
            "evidence": s.evidence(), "wanted": {s.uid(s.pa), s.uid(s.ll)}}


def discontinued(s: Scenario) -> dict[str, Any]:
    """A DISCONTINUED MPPS and a rule with on_discontinued: skip: decided at the N-SET, the job skipped, nothing sent."""
    port = s.node.port
    assert mpps_create(port, s.mpps, s.study) == 0x0000
    s.send(s.pa, s.ll)
    s.mark("n-set")
    assert mpps_set(port, s.mpps, "DISCONTINUED", instance_refs([s.pa, s.ll])) == 0x0000
    decision = s.decision()
    job = wait_until(lambda: db_rows(s.node, "SELECT state, outcome FROM jobs WHERE study_uid = ?", s.study), 15,
                     "the skipped job")
    time.sleep(2.0)  # a result, if the job ran after all, would be in the PACS by now
    return {"early": s.results(), "decision": decision, "job": job, "after": s.marks["n-set"]}


SCENARIOS: dict[str, Callable[[Scenario], dict[str, Any]]] = {
    "mpps_before_last": mpps_before_last, "mpps_first": mpps_first, "mpps_after": mpps_after, "never_comes": never_comes,
    "ian": by_ian, "expected": by_expected_content, "discontinued": discontinued}


def test_mpps_ian_and_expected_content_decide_studies_when_the_modality_says_so(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    pacs_dir = tmp_path / "pacs"
    with EmulatorServer("127.0.0.1", 0) as emulator, MiniPACS(folder=pacs_dir) as pacs:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.ae_title, pacs.port), quiet=QUIET)
        cfg["node"].update(accept_mpps=True, accept_ian=True, study_complete_max_wait_seconds=MAX_WAIT)
        cfg["rules"][0].update(complete_when={"series": [{"match": {"ViewPosition": "PA"}},
                                                         {"match": {"ViewPosition": "LL"}}]},
                               on_discontinued="skip")
        node = NodeProcess(tmp_path, cfg).start()
        try:
            node.wait_worker_started()
            scenarios = {name: Scenario(name, tmp_path, data, node, pacs_dir) for name in SCENARIOS}
            with concurrent.futures.ThreadPoolExecutor(len(scenarios)) as pool:
                futures = {name: pool.submit(SCENARIOS[name], s) for name, s in scenarios.items()}
                got = {name: f.result() for name, f in futures.items()}
        finally:
            node.stop()
        logs = node.logs()
    assert "DEMO^PATIENT" not in logs and "DEMO-0001" not in logs, "PHI in the node's log"

    for name in ("mpps_before_last", "mpps_first", "mpps_after", "ian", "expected"):
        r = got[name]
        assert not r["early"], f"{name}: a result reached the PACS before the study was complete"
        assert r["after"] < r["result"] < r["after"] + QUIET - 5, (name, r)
        if "wanted" in r:
            assert r["evidence"] == r["wanted"], f"{name}: the report was made without the last instance"
        trigger, decided_at, detail, _ = r["decision"]
        assert trigger == ("mpps" if name.startswith("mpps") else name), (name, r["decision"])
        assert decided_at >= r["after"], (name, r["decision"], r["after"])

    r = got["never_comes"]
    trigger, decided_at, detail, _ = r["decision"]
    assert trigger == "max_wait" and "not held" in detail, r["decision"]
    assert r["after"] + MAX_WAIT - 0.5 <= r["result"] < r["after"] + QUIET - 5, r
    nc = scenarios["never_comes"]
    evidence = {str(i.ReferencedSOPInstanceUID) for _, ds in results_for(pacs_dir, nc.study) if ds.Modality == "SR"
                for ev in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for se in ev.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == {str(pydicom.dcmread(nc.pa, stop_before_pixels=True).SOPInstanceUID)}, "decided with what came"

    r = got["discontinued"]
    trigger, decided_at, detail, disc = r["decision"]
    assert trigger == "mpps" and disc and "DISCONTINUED" in detail, r["decision"]
    assert r["job"][0][0] == "skipped" and "DISCONTINUED" in r["job"][0][1], r["job"]
    assert not r["early"], "a rule with on_discontinued: skip sent a result"
