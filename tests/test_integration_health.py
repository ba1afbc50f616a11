"""The status page's endpoint health (node/http/queries.py ``endpoint_health``) says what the endpoint did, not what
one input did: jobs run through the real pipeline and client against the emulator (a real HTTP server answering as
Azure ML does), then the page and the query are read.

The issue-23 promise: a poison input (424 with the container's 413) never counts against the endpoint; a 401 (the
credential) or an open circuit (503 after the client's retries) does; a good study after a refusal is still "ok".
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from starlette.testclient import TestClient

from node.config import parse_config
from node.emulator.server import EmulatorServer
from node.flow import run as run_module
from node.flow.intake import Intake
from node.flow.services import Services
from node.http.app import build_app
from node.http.queries import endpoint_health
from node.store.spool import Spool
from node.store.state import InstanceRecord, Store

POISON_PIXELS = 2_000_000  # the emulator refuses images larger than this: the 1955x1841 CR is, the 1024x1024 is not


class FakeQueue:
    def __init__(self) -> None:
        self.jobs: list[tuple[int, float]] = []

    def enqueue_job(self, job_id: int, delay: float = 0.0) -> None:
        self.jobs.append((job_id, delay))

    def enqueue_delivery(self, destination: str, delay: float = 0.0) -> None:
        pass


@pytest.fixture()
def emulator():
    with EmulatorServer(max_input_pixels=POISON_PIXELS) as server:
        yield server


@pytest.fixture()
def svc(tmp_path: Path, emulator: EmulatorServer) -> Services:
    cfg = parse_config({
        "node": {"storage_dir": str(tmp_path / "var"), "instance_id": "t", "min_free_disk_mb": 0},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": emulator.model_url("cxrreportgen"), "auth": "none",
                              "max_attempts": 2, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.1,
                              "retry_initial_seconds": 60, "model_version": "CXRReportGen:test-1"}},
        "destinations": {},
        "rules": [{"name": "chest", "endpoint": "cxr"}],
        "http": {"port": 18098},
    }, tmp_path / "n.yaml", tmp_path)
    Spool(cfg.storage_dir).create()
    store = Store.open(cfg.database_url)
    return Services(cfg=cfg, store=store, queue=FakeQueue(), spool=Spool(cfg.storage_dir),  # type: ignore[arg-type]
                    intake=Intake(cfg, store, None), owner="t:1:a")


def run_study(svc: Services, tmp: Path, source: Path, label: str, patients: tuple[str, ...] = ("P1",)) -> dict:
    """One study (one image per patient ID given) through run_job (the real CXRReportGen pipeline and client); its
    job row after."""
    study = f"1.2.826.0.1.3680043.10.1234.{label}"
    records = []
    for i, patient in enumerate(patients, 1):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, study + ".1", f"{study}.1.{i}"
        ds.PatientID = patient
        path = tmp / f"{label}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        records.append(InstanceRecord(f"{study}.1.{i}", study, study + ".1", str(ds.SOPClassUID),
                                      str(ds.file_meta.TransferSyntaxUID), str(path), 1, "MOD"))
    svc.store.record_instances(records, quiet_seconds=0)
    assert svc.store.begin_decision(study, 0.0)[0] == "complete"
    (job_id,) = svc.store.create_jobs(study, 1, [("chest", "cxr", [study + ".1"])])
    run_module.run_job(svc, job_id)
    return job(svc, job_id)


def job(svc: Services, job_id: int) -> dict:
    row = svc.store.job(job_id)
    assert row is not None
    return row


def health(svc: Services) -> dict:
    (row,) = endpoint_health(svc.store, ["cxr"])
    return row


def page_health(svc: Services) -> str:
    """The Health cell of the endpoint's row on the status page, as served."""
    text = TestClient(build_app(svc.cfg)).get("/").text
    table = text[text.index('<table id="endpoints">'):]
    row = table[table.index("<td>cxr</td>"):]
    return row[:row.index("</tr>")]


def test_a_refused_input_leaves_the_endpoint_healthy_and_endpoint_faults_do_not(
        svc: Services, emulator: EmulatorServer, data: Path, tmp_path: Path) -> None:
    good = run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "1")
    assert good["state"] == "done", good
    assert health(svc)["health"] == "ok"

    # the poison: the model refuses this input (424, inner 413), as the emulator's log says
    poison = run_study(svc, tmp_path, data / "cxr" / "cr_pa_mono1_uncompressed.dcm", "2")
    answered = emulator.requests[-1]
    assert answered["status"] == 424 and poison["state"] == "failed", (answered, poison)
    h = health(svc)
    assert h["healthy"] and h["health"] == "ok", h
    assert h["last"]["state"] == "failed"  # the last job did fail: its input's fault, not the endpoint's
    assert 'class="ok"' in page_health(svc) and ">ok<" in page_health(svc), page_health(svc)

    # a 424 whose inner status is 5xx, past model_error_retries (2): the endpoint answered, still healthy
    emulator.script_faults([{"status": 424, "model_status": 500, "repeat": 3}])
    spent = run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "3")
    for _ in range(2):
        assert spent["state"] == "pending", spent  # tried again for that job only
        run_module.run_job(svc, spent["id"])
        spent = job(svc, spent["id"])
    assert spent["state"] == "failed" and "model_error_retries 2" in spent["outcome"], spent
    assert [r["status"] for r in emulator.requests[-3:]] == [424] * 3
    assert health(svc)["health"] == "ok"
    emulator.reset()

    # the credential: a 401 (after the client's one reload) is the endpoint's configuration: failing
    emulator.script_faults([{"status": 401, "repeat": 3}])
    refused = run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "4")
    assert refused["state"] == "failed" and emulator.requests[-1]["status"] == 401, refused
    h = health(svc)
    assert not h["healthy"] and h["health"] == "failing" and "HTTP 401" in h["why"], h
    assert 'class="bad"' in page_health(svc) and "failing" in page_health(svc)
    emulator.reset()

    # a good study after it: ok again; then another poison: still ok
    assert run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "5")["state"] == "done"
    assert health(svc)["health"] == "ok"
    assert run_study(svc, tmp_path, data / "cxr" / "cr_pa_mono1_uncompressed.dcm", "6")["state"] == "failed"
    assert health(svc)["health"] == "ok"

    # the endpoint down: 503 after the client's retries opens the circuit: unavailable, whatever the last job was
    emulator.script_faults([{"status": 503, "repeat": 2}])
    waiting = run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "7")
    assert waiting["state"] == "pending" and svc.store.circuit("cxr") is not None, waiting
    h = health(svc)
    assert not h["healthy"] and h["health"] == "unavailable" and "HTTP 503" in h["why"], h
    assert "unavailable" in page_health(svc)
    assert [r["status"] for r in emulator.requests[-2:]] == [503, 503]


def test_a_job_that_failed_before_its_call_says_nothing_about_the_endpoint(
        svc: Services, emulator: EmulatorServer, data: Path, tmp_path: Path) -> None:
    emulator.script_faults([{"status": 401, "repeat": 3}])
    assert run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "1")["state"] == "failed"
    assert health(svc)["health"] == "failing"
    emulator.reset()
    # a study mixing two patients fails without a call: the endpoint's last word (the 401) still stands
    mixed = run_study(svc, tmp_path, data / "cxr" / "cr_pa_jpeg_baseline.dcm", "2", patients=("P1", "P2"))
    assert mixed["state"] == "failed" and emulator.requests == [], mixed
    h = health(svc)
    assert h["health"] == "failing" and h["last"]["outcome"] == mixed["outcome"], h
