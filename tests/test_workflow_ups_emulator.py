"""The emulated UPS-RS worklist answers as PS3.4 CC / PS3.18 §11 and the Azure DICOM service v2 statement say, and the
node's UPS-RS client (node/ups/client.py) reads those answers. The expected statuses are the documents' own
(node/emulator/ups_rs/worklist.py's table cites them); no node process, no database."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.config import parse_config
from node.emulator.ups_rs import UpsRsEmulator
from node.ups.client import UpsClient
from node.ups.workitem import OutputRef, completion, inputs_of, progress, workitem_codes
from support.studies import derive_cxr_study
from support.worklist import TASK_CODE, TASK_SCHEME, create, workitem

pytestmark = pytest.mark.nodb


@pytest.fixture
def worklist(tmp_path: Path, data: Path):
    files = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    with UpsRsEmulator() as emu:
        cfg = parse_config({"endpoints": {"e": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score",
                                                "auth": "none"}},
                            "rules": [{"name": "r", "endpoint": "e"}],
                            "sources": [{"type": "ups-rs", "url": emu.url,
                                         "workitems": [{"code": TASK_CODE, "scheme": TASK_SCHEME, "rule": "r"}]}]})
        client = UpsClient(cfg.sources[0])
        yield emu, client, files
        client.close()


def _new(emu: UpsRsEmulator, files: list[Path], base: str | None = "http://archive/v2") -> str:
    uid = generate_uid()
    assert create(emu.url, workitem(uid, files, base)).status_code == 201
    return uid


def test_create_search_and_retrieve(worklist) -> None:
    emu, client, files = worklist
    uid = _new(emu, files)
    assert create(emu.url, workitem(uid, files, None)).status_code == 409, "a second create of one UID"
    bad = workitem(generate_uid(), files, None)
    del bad.ProcedureStepLabel
    assert create(emu.url, bad).status_code == 400, "a required attribute missing"
    found = client.search({"ProcedureStepState": "SCHEDULED"}, 100)
    assert [str(d.SOPInstanceUID) for d in found] == [uid]
    assert workitem_codes(found[0]) == [(TASK_CODE, TASK_SCHEME)]
    assert [i.sop_instance_uid for i in inputs_of(found[0])] == [
        str(__import__("pydicom").dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert client.search({"ProcedureStepState": "COMPLETED"}, 100) == [], "nothing matches: 204"
    rsp = httpx.get(f"{emu.url}/workitems", params={"ScheduledWorkitemCodeSequence.CodeValue": TASK_CODE},
                    trust_env=False)
    assert rsp.status_code == 400, "not one of the service's searchable attributes"
    assert httpx.get(f"{emu.url}/workitems", params={"limit": "201"}, trust_env=False).status_code == 400
    by_station = client.search({"ScheduledStationNameCodeSequence.CodeValue": "AINODE"}, 100)
    assert [str(d.SOPInstanceUID) for d in by_station] == [uid], "matching inside a sequence"
    answer, ds = client.retrieve(uid)
    assert answer.status == 200 and str(ds.ProcedureStepState) == "SCHEDULED"
    assert client.retrieve(generate_uid())[0].status == 404


def test_one_claim_wins_and_only_its_transaction_uid_may_change_the_workitem(worklist) -> None:
    emu, client, files = worklist
    uid = _new(emu, files)
    mine, theirs = generate_uid(), generate_uid()
    assert client.update(uid, mine, progress(1, "x")).status == 400, "a SCHEDULED workitem takes no Transaction UID"
    assert client.change_state(uid, mine, "COMPLETED").status == 409, "not yet IN PROGRESS (C310)"
    assert client.change_state(uid, mine, "IN PROGRESS").status == 200
    assert client.change_state(uid, theirs, "IN PROGRESS").status == 409, "a double claim (C302)"
    assert client.change_state(uid, mine, "IN PROGRESS").status == 409, "even by its owner: already IN PROGRESS"
    _, ds = client.retrieve(uid)
    assert "TransactionUID" not in ds and str(ds.ProcedureStepState) == "IN PROGRESS"
    assert client.update(uid, theirs, progress(10, "x")).status == 400, "a wrong Transaction UID (C301)"
    assert client.update(uid, None, progress(10, "x")).status == 400, "no Transaction UID"
    assert client.update(uid, mine, progress(10, "working")).status == 200
    assert client.change_state(uid, theirs, "CANCELED").status == 400
    assert client.change_state(uid, mine, "COMPLETED").status == 400, "final state requirements not met (C304)"
    out = OutputRef(str(ds.StudyInstanceUID), generate_uid(), generate_uid(), "1.2.840.10008.5.1.4.1.1.88.33",
                    ("http://archive/v2",), ())
    assert client.update(uid, mine, completion(0.0, "AINODE", [(TASK_CODE, TASK_SCHEME)], [out], "done")).status == 200
    assert client.change_state(uid, mine, "COMPLETED").status == 200
    again = client.change_state(uid, mine, "COMPLETED")
    assert again.status == 200 and "already in the requested state" in again.warning
    assert client.change_state(uid, mine, "CANCELED").status == 409, "a COMPLETED workitem may no longer change"
    assert client.update(uid, mine, progress(100, "x")).status == 400
    _, done = client.retrieve(uid)
    step = done.UnifiedProcedureStepPerformedProcedureSequence[0]
    item = step.OutputInformationSequence[0]
    assert item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == out.sop_instance_uid
    assert item.WADORSRetrievalSequence[0].RetrieveURL.endswith(f"/series/{out.series_uid}")


def test_cancel_needs_its_reason_date(worklist) -> None:
    emu, client, files = worklist
    uid = _new(emu, files)
    txn = generate_uid()
    assert client.change_state(uid, txn, "IN PROGRESS").status == 200
    assert client.change_state(uid, txn, "CANCELED").status == 400, "no Procedure Step Cancellation DateTime"
    assert client.update(uid, txn, progress(100, "canceled", reason="the job failed")).status == 200
    assert client.change_state(uid, txn, "CANCELED").status == 200
    other = _new(emu, files)
    assert httpx.post(f"{emu.url}/workitems/{other}/cancelrequest", content=b"{}", trust_env=False,
                      headers={"Content-Type": "application/dicom+json"}).status_code == 202
    assert client.retrieve(other)[1].ProcedureStepState == "CANCELED"
    assert client.change_state(other, txn, "IN PROGRESS").status == 409


def test_json_content_type_is_required(worklist) -> None:
    emu, _, files = worklist
    uid = _new(emu, files)
    body = Dataset()
    body.TransactionUID, body.ProcedureStepState = generate_uid(), "IN PROGRESS"
    rsp = httpx.put(f"{emu.url}/workitems/{uid}/state", content=b"{}", headers={"Content-Type": "application/json"},
                    trust_env=False)
    assert rsp.status_code == 415
