"""The node as an IHE AIW-I Task Performer, end to end: real ``dicom-node serve`` processes polling the emulated UPS-RS
worklist, inputs fetched by WADO-RS from the emulated Azure DICOM service, CXRReportGen on the endpoint emulator, the
results stored back by STOW-RS, the workitem completed with its outputs.

Counted outside the nodes: claims and state changes in the worklist's own log (with their Transaction UIDs), model
calls in the endpoint emulator's request log, and STOW-RS arrivals per SOP Instance UID at the archive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.dicomweb import multipart
from node.emulator.azure_dicom import AzureDicomEmulator
from node.emulator.server import EmulatorServer
from node.emulator.ups_rs import UpsRsEmulator
from support.nodekit import db_rows, wait_until
from support.nodeproc import NodeProcess, node_config
from support.studies import derive_cxr_study
from support.worklist import TASK_CODE, TASK_SCHEME, create, workitem

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def stow(url: str, files: list[Path]) -> None:
    body, content_type = multipart.encode(f.read_bytes() for f in files)
    rsp = httpx.post(f"{url}/studies", content=body, headers={"Content-Type": content_type}, timeout=60,
                     trust_env=False)
    assert rsp.status_code == 200, rsp.text


def performer(tmp: Path, name: str, *, model: str, ups: str, archive: str) -> NodeProcess:
    cfg = node_config(tmp / name, endpoint_url=model, pacs=None, quiet=30.0)
    cfg["node"]["instance_id"] = name
    cfg["destinations"]["archive"] = {"type": "dicomweb", "url": archive, "backoff_initial_seconds": 0.5,
                                      "backoff_max_seconds": 2}
    cfg["rules"][0]["send_to"] = ["archive"]
    cfg["sources"] = [{"type": "ups-rs", "name": "worklist", "url": ups, "poll_seconds": 0.3,
                       "workitems": [{"code": TASK_CODE, "scheme": TASK_SCHEME, "rule": "chest-xray-findings"}]}]
    (tmp / name).mkdir(parents=True, exist_ok=True)
    return NodeProcess(tmp / name, cfg)


def state_log(ups: UpsRsEmulator, uid: str, op: str = "state") -> list[dict[str, Any]]:
    with ups.worklist.lock:
        return [e for e in ups.worklist.log if e["workitem"] == uid and e["op"] == op]


def stored(ups: UpsRsEmulator, uid: str) -> Dataset:
    with ups.worklist.lock:
        return ups.worklist.items[uid].ds


def completed(ups: UpsRsEmulator, uid: str) -> bool:
    return str(stored(ups, uid).ProcedureStepState) == "COMPLETED"


def assert_completed_once_with_outputs(ups: UpsRsEmulator, azure: AzureDicomEmulator, model: EmulatorServer,
                                       uid: str, inputs: list[Path]) -> str:
    """One successful claim, one completion under the same Transaction UID, one model call, each result stored once
    at the archive and listed in the Output Information Sequence; returns the Transaction UID."""
    states = state_log(ups, uid)
    claims = [e for e in states if e["state"] == "IN PROGRESS" and e["status"] == 200]
    done = [e for e in states if e["state"] == "COMPLETED" and e["status"] == 200 and not e.get("warning")]
    assert len(claims) == 1, states
    assert len(done) == 1 and done[0]["transaction"] == claims[0]["transaction"], states
    assert len([r for r in model.requests if r.get("model") == "cxrreportgen"]) == 1, "the task was performed once"
    input_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in inputs}
    results = {sop: n for sop, n in azure.archive.stow_counts.items() if sop not in input_uids}
    assert len(results) == 2 and set(results.values()) == {1}, f"SR + GSPS, each stored once: {results}"
    step = stored(ups, uid).UnifiedProcedureStepPerformedProcedureSequence[0]
    listed = {str(ref.ReferencedSOPInstanceUID): item for item in step.OutputInformationSequence
              for ref in item.ReferencedSOPSequence}
    assert set(listed) == set(results), "the outputs listed are what the archive received"
    for item in step.OutputInformationSequence:
        url = item.WADORSRetrievalSequence[0].RetrieveURL
        assert url == f"{azure.url}/studies/{item.StudyInstanceUID}/series/{item.SeriesInstanceUID}"
        got = httpx.get(f"{url}/instances/{item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID}",
                        headers={"Accept": 'multipart/related; type="application/dicom"'}, trust_env=False)
        assert got.status_code == 200, "an output can be retrieved where the workitem says"
    assert step.PerformedWorkitemCodeSequence[0].CodeValue == TASK_CODE
    assert step.PerformedProcedureStepEndDateTime >= step.PerformedProcedureStepStartDateTime
    return claims[0]["transaction"]


@pytest.fixture
def services(tmp_path: Path, data: Path):
    files = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    with UpsRsEmulator() as ups, AzureDicomEmulator(tmp_path / "azure") as azure, \
            EmulatorServer("127.0.0.1", 0) as model:
        stow(azure.url, files)
        yield ups, azure, model, files


def test_a_workitem_is_claimed_once_by_two_nodes_performed_once_and_completed_with_its_outputs(
        tmp_path: Path, services) -> None:
    ups, azure, model, files = services
    ups.delay_state_changes(1.5)  # both nodes see it SCHEDULED and both ask: one claim wins, the other gets 409
    nodes = [performer(tmp_path, n, model=model.url, ups=ups.url, archive=azure.url) for n in ("node-a", "node-b")]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_worker_started()
        uid = generate_uid()
        assert create(ups.url, workitem(uid, files, azure.url)).status_code == 201
        wait_until(lambda: completed(ups, uid), 120, "the workitem COMPLETED")
        ups.delay_state_changes(0)
        txn = assert_completed_once_with_outputs(ups, azure, model, uid, files)
        claims = [e for e in state_log(ups, uid) if e["state"] == "IN PROGRESS"]
        assert [e["status"] for e in claims].count(409) >= 1, f"the second node's claim was refused: {claims}"
        rows = {n.config["node"]["instance_id"]: db_rows(n, "SELECT state, transaction_uid FROM ups_workitems "
                                                          "WHERE workitem_uid = ?", uid) for n in nodes}
        assert sorted(r[0][0] for r in rows.values()) == ["completed", "lost"], rows
        assert [r[0][1] for r in rows.values() if r[0][0] == "completed"] == [txn]
        decisions = [db_rows(n, "SELECT trigger FROM decisions") for n in nodes]
        assert sorted(map(str, decisions)) == ["[('ups',)]", "[]"], decisions
    finally:
        for node in nodes:
            node.stop()
    logs = "".join(n.logs() for n in nodes)
    assert "DEMO^PATIENT" not in logs and "DEMO-0001" not in logs, "PHI in a node's log"


def test_a_kill_after_the_claim_and_after_the_report_resumes_the_same_workitem_and_completes_it_once(
        tmp_path: Path, services, monkeypatch: pytest.MonkeyPatch) -> None:
    ups, azure, model, files = services
    node = performer(tmp_path, "node-a", model=model.url, ups=ups.url, archive=azure.url)
    uid = generate_uid()
    # killed when the claim was answered but not yet recorded, when the outputs were reported but COMPLETED not yet
    # asked for, and when COMPLETED was accepted but not yet recorded
    for point in ("workitem_claim_answered", "workitem_reported", "workitem_final_answered"):
        monkeypatch.setenv("DICOM_NODE_FAILPOINTS", f"{point}=60")
        node.start()
        if point == "workitem_claim_answered":
            assert create(ups.url, workitem(uid, files, azure.url)).status_code == 201
        wait_until(lambda: f"failpoint {point} reached" in node.log_path.read_text(errors="replace"), 90,
                   f"the node to reach {point}")
        node.kill()
        monkeypatch.delenv("DICOM_NODE_FAILPOINTS")
        assert completed(ups, uid) == (point == "workitem_final_answered")
    node.start()
    try:
        wait_until(lambda: db_rows(node, "SELECT state FROM ups_workitems") == [("completed",)], 120,
                   "the node to record the completion after the restarts")
        txn = assert_completed_once_with_outputs(ups, azure, model, uid, files)
        assert db_rows(node, "SELECT state, transaction_uid, reason FROM ups_workitems") == [("completed", txn, None)], \
            "its own completion recognised as such"
        claims = [(e["status"], e["transaction"]) for e in state_log(ups, uid) if e["state"] == "IN PROGRESS"]
        assert claims == [(200, txn), (409, txn)], "claimed once; the resumed claim found it already its own"
        reports = [(e["status"], e["transaction"]) for e in state_log(ups, uid, "update")
                   if "UnifiedProcedureStepPerformedProcedureSequence" in e.get("keys", []) or e["status"] != 200]
        # reported, reported again after the second kill, then refused (400: COMPLETED) after the third: the node
        # read the workitem, found it COMPLETED, and asked for no second completion
        assert reports == [(200, txn), (200, txn), (400, txn)], reports
    finally:
        node.stop()


def test_a_workitem_whose_inputs_do_not_exist_ends_canceled_with_the_reason(tmp_path: Path, services) -> None:
    ups, azure, model, files = services
    node = performer(tmp_path, "node-a", model=model.url, ups=ups.url, archive=azure.url)
    ghost = tmp_path / "ghost.dcm"
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(ghost, enforce_file_format=True)  # never stored at the archive
    uid = generate_uid()
    node.start()
    try:
        assert create(ups.url, workitem(uid, [ghost], azure.url)).status_code == 201
        wait_until(lambda: str(stored(ups, uid).ProcedureStepState) == "CANCELED", 90, "the workitem CANCELED")
        item = stored(ups, uid).ProcedureStepProgressInformationSequence[0]
        assert "does not exist" in item.ReasonForCancellation and item.ProcedureStepCancellationDateTime
        assert model.requests == [], "nothing was sent to the model"
    finally:
        node.stop()
    assert json.dumps(db_rows(node, "SELECT state FROM ups_workitems")) == '[["canceled"]]'
    out = subprocess.run([sys.executable, "-m", "node.cli", "workitems", "--json", "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=60)
    listed = json.loads(out.stdout)
    assert listed["counts"] == {"canceled": 1} and "does not exist" in listed["workitems"][0]["reason"], out.stderr
    assert "transaction_uid" not in listed["workitems"][0], "the workitem's lock is not shown"
