"""The monitoring side on the node's database, in process: matching, retention, the doors' writes, the evaluation
and its alerts, the page, the gauges and the committee's CSV (engine: also run on PostgreSQL)."""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import insert, select
from starlette.testclient import TestClient

from node.config import parse_config
from node.hl7.handlers import configure, discover
from node.hl7.inbound import Inbound
from node.http.app import build_app
from node.monitoring.baseline import Window, pin
from node.monitoring.evaluate import evaluate
from node.monitoring.intake import accession_hash, source_key
from node.store.monitoring import observation_write, report_write
from node.store.schema import monitoring
from node.store.spool import Spool
from node.store.state import Store
from support.data import REPO
from support.monitoring_data import Stream, observations

pytestmark = pytest.mark.engine
TOKEN = "monitoring-test-token-0123456789"
DAY = 86400.0
ORU = (REPO / "tests" / "data" / "hl7" / "oru_r01_radiologist.hl7").read_bytes().replace(b"\n", b"\r")


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var"), "min_free_disk_mb": 0},
                        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:9/score",
                                              "auth": "none"}},
                        "http": {"port": 18098, "token_env": "MONITORING_TEST_TOKEN"},
                        "mllp": {"host": "127.0.0.1", "port": 0},
                        "monitoring": {"min_window_cases": 20, "min_pairs": 10, "permutations": 2000}},
                       tmp_path / "n.yaml", tmp_path)
    Spool(cfg.storage_dir).create()
    monkeypatch.setenv("MONITORING_TEST_TOKEN", TOKEN)
    return cfg, Store.open(cfg.database_url)


def obs_row(study: str, *, job: int, findings: dict | None = None, version: str = "cxr-v1",
            accession: str | None = None) -> dict:
    return {"job_id": job, "study_uid": study, "study_version": 1, "accession_hash": accession_hash(accession),
            "rule": "chest", "endpoint": "cxr", "model": "cxrreportgen", "model_version": version, "site": "CR1",
            "institution": "General", "modality": "CR", "manufacturer": "Agfa", "inputs": "[]",
            "findings": json.dumps(findings or {}), "labels": "{}", "n_findings": 1, "endpoint_seconds": 1.0}


def rep_row(key: str, *, study: str | None = None, accession: str | None = None, findings: dict | None = None) -> dict:
    return {"door": "fhir", "source_key": source_key("fhir", key), "study_uid": study,
            "accession_hash": accession_hash(accession), "status": "final", "reported_at": time.time(),
            "findings": json.dumps(findings or {}), "labels": "{}", "sentences": 1, "text": None}


def table(store: Store, t) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t)).mappings()]


def test_a_report_and_its_ai_result_match_in_either_order(env) -> None:
    _, store = env
    # report first, by accession only; the AI result comes later
    assert store.monitor_write(report_write(rep_row("r1", accession="ACC-1", findings={"pneumothorax": "present"}))) \
        == "stored"
    store.monitor_write(observation_write(obs_row("1.2.3.1", job=1, accession="ACC-1")))
    # AI result first; the report names the study UID
    store.monitor_write(observation_write(obs_row("1.2.3.2", job=2)))
    assert store.monitor_write(report_write(rep_row("r2", study="1.2.3.2"))) == "stored-matched"
    # a report for a study the node never saw
    store.monitor_write(report_write(rep_row("r3", accession="ACC-404")))
    reports = {r["source_key"]: r for r in table(store, monitoring.reports)}
    assert reports[source_key("fhir", "r1")]["study_uid"] == "1.2.3.1"
    assert reports[source_key("fhir", "r1")]["matched_at"] is not None
    assert reports[source_key("fhir", "r2")]["matched_at"] is not None
    assert reports[source_key("fhir", "r3")]["matched_at"] is None
    assert set(store.matched_reports(["1.2.3.1", "1.2.3.2"])) == {"1.2.3.1", "1.2.3.2"}
    # a corrected version replaces the labels; retention drops only the unmatched report once it is old
    store.monitor_write(report_write(rep_row("r1", accession="ACC-1", findings={"pneumothorax": "absent"})))
    assert store.matched_reports(["1.2.3.1"])["1.2.3.1"]["findings"] == {"pneumothorax": "absent"}
    assert store.purge_monitoring(unmatched_seconds=3600, keep_seconds=400 * DAY)["reports"] == 0
    with store.engine.begin() as conn:
        conn.execute(monitoring.reports.update().values(received_at=time.time() - 2 * 3600))
    assert store.purge_monitoring(unmatched_seconds=3600, keep_seconds=400 * DAY)["reports"] == 1
    assert len(table(store, monitoring.reports)) == 2


def _inbound(cfg, store: Store) -> Inbound:
    configure(cfg)
    discover()
    return Inbound(store, "DICOM_AI_NODE")


def test_the_hl7_door_keeps_labels_not_text_and_refuses_a_report_naming_no_study(env) -> None:
    cfg, store = env
    inbound = _inbound(cfg, store)
    outcome = inbound.handle(ORU, "127.0.0.1")
    assert outcome.code == "AA", outcome.reason
    (row,) = table(store, monitoring.reports)
    assert row["door"] == "hl7" and row["text"] is None and row["status"] == "final"
    assert json.loads(row["findings"]) == {"pleural_effusion": "present", "pneumothorax": "absent"}
    # no PHI in any monitoring table: no name, patient ID, accession, nor a sentence of the report
    dump = json.dumps([table(store, t) for t in (monitoring.reports, monitoring.observations)], default=str)
    for phi in ("DOE", "PAT-0042", "ACC-ORM-1", "pleural effusion", "19600101"):
        assert phi not in dump, phi
    assert row["accession_hash"] == accession_hash("ACC-ORM-1")
    refused = inbound.handle(ORU.replace(b"ACC-ORM-1", b"").replace(b"RPT-0001", b"RPT-0002"), "127.0.0.1")
    assert refused.code == "AE" and "names no study" in refused.reason
    cancelled = ORU.replace(b"RPT-0001", b"RPT-0003").replace(b"||RAD|F", b"||RAD|X")
    assert inbound.handle(cancelled, "127.0.0.1").code == "AA"
    assert table(store, monitoring.reports) == []  # the cancellation withdrew the report of the same source


def test_keep_report_text_keeps_it(env, tmp_path: Path) -> None:
    cfg, store = env
    cfg = cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(update={"keep_report_text": True})})
    assert _inbound(cfg, store).handle(ORU, "127.0.0.1").code == "AA"
    assert "Small right pleural effusion" in table(store, monitoring.reports)[0]["text"]


def _fhir(status: str = "final", accession: str = "ACC-F1") -> dict:
    return {"resourceType": "DiagnosticReport", "id": "x1", "status": status, "code": {"text": "XR chest"},
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                  "code": "ACSN"}]}, "value": accession}],
            "conclusion": "Moderate cardiomegaly. No effusion."}


def test_the_fhir_door_behind_the_write_check(env) -> None:
    cfg, store = env
    client = TestClient(build_app(cfg))
    assert client.post("/fhir/DiagnosticReport", json=_fhir()).status_code == 401
    assert client.post("/fhir/DiagnosticReport", json=_fhir(),
                       headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = client.post("/fhir/DiagnosticReport", json=_fhir(), headers=auth)
    assert ok.status_code == 200 and ok.json()["resourceType"] == "OperationOutcome", ok.text
    (row,) = table(store, monitoring.reports)
    assert json.loads(row["findings"]) == {"cardiomegaly": "present", "pleural_effusion": "absent"}
    assert client.post("/fhir/DiagnosticReport", content=b"x", headers={**auth, "Content-Type": "text/plain"}
                       ).status_code == 415
    assert client.post("/fhir/DiagnosticReport", json={"resourceType": "Patient"}, headers=auth).status_code == 400
    bad = _fhir()
    bad["identifier"] = []
    assert client.post("/fhir/DiagnosticReport", json=bad, headers=auth).status_code == 422
    pre = client.post("/fhir/DiagnosticReport", json=_fhir("preliminary", "ACC-F2"), headers=auth)
    assert pre.status_code == 200 and "not taken" in pre.text
    assert client.put("/fhir/DiagnosticReport/x1", json=_fhir("entered-in-error"), headers=auth).status_code == 200
    assert table(store, monitoring.reports) == []


_JOBS = itertools.count(10_000)


def _insert_observations(store: Store, rows: list[dict], at: float) -> None:
    with store.engine.begin() as conn:
        for i, r in enumerate(rows):
            values = {k: v for k, v in r.items() if k not in ("id", "observed_at")}
            values.update(job_id=next(_JOBS), observed_at=at + i,
                          **{k: json.dumps(r[k]) for k in ("inputs", "findings", "labels")})
            conn.execute(insert(monitoring.observations).values(**values))


def test_drift_alerts_on_a_second_manufacturer_clears_without_it_and_never_mixes_versions(env, caplog) -> None:
    cfg, store = env
    rng = np.random.default_rng(11)
    now = time.time()
    _insert_observations(store, observations(Stream(), 200, rng), now - 30 * DAY)
    pinned = pin(store, model="cxrreportgen", window=Window(now - 31 * DAY, now - 20 * DAY), min_cases=20)
    assert pinned["model_version"] == "cxr-v1" and json.loads(pinned["summary"])["n"] == 200

    shifted = Stream().shifted(manufacturers={"Agfa": 0.4, "Carestream": 0.2, "Fujifilm": 0.4})
    _insert_observations(store, observations(shifted, 120, rng), now - 2 * DAY)
    with caplog.at_level(logging.INFO, logger="node.monitoring.evaluate"):
        out = evaluate(store, cfg.monitoring, now=now)
    flagged = {r["test"] for r in out.drift if r["significant"]}
    assert "input:manufacturer" in flagged, out.drift
    assert any(r.levelname == "ERROR" and r.getMessage().startswith("ALERT: monitoring drift") for r in caplog.records)
    assert any(a["key"].endswith(":input:manufacturer") for a in store.open_alerts())
    client = TestClient(build_app(cfg))
    assert "monitoring alert" in client.get("/").text  # the status page's banner
    metrics = client.get("/metrics").text
    assert 'dicom_node_monitoring_alerts{kind="drift"}' in metrics
    assert 'dicom_node_monitoring_drift_significant{model="cxrreportgen",test="input:manufacturer",version="cxr-v1"} 1.0' \
        in metrics

    # a week later: version 2 only (an in-place update): not compared with v1's baseline; the alert clears
    _insert_observations(store, observations(Stream(model_version="cxr-v2"), 120, rng), now + 6 * DAY)
    later = evaluate(store, cfg.monitoring, now=now + 8 * DAY)
    assert later.drift == [] and any("cxr-v1" in u for u in later.untested)
    assert store.open_alerts() == [] and later.cleared
    v2 = pin(store, model="cxrreportgen", window=Window(now + 5 * DAY, now + 9 * DAY), min_cases=20)
    assert v2["model_version"] == "cxr-v2"
    quiet = evaluate(store, cfg.monitoring, now=now + 8 * DAY + 60)
    assert {r["model_version"] for r in quiet.drift} == {"cxr-v2"} and not any(r["significant"] for r in quiet.drift)


def test_agreement_below_the_floor_alerts_and_the_page_and_csv_show_the_counts(env, capsys) -> None:
    cfg, store = env
    # 12 studies: the AI finds a pneumothorax in 10 of them, the radiologist in 2 of those 10 and 2 others
    truth = [(i < 10, i < 2 or i >= 10) for i in range(12)]
    for i, (ai, rad) in enumerate(truth):
        store.monitor_write(observation_write(obs_row(f"1.9.{i}", job=100 + i,
                                                      findings={"pneumothorax": 1} if ai else {})))
        store.monitor_write(report_write(rep_row(f"p{i}", study=f"1.9.{i}",
                                                 findings={"pneumothorax": "present" if rad else "absent"})))
    a = sum(ai and rad for ai, rad in truth)
    b = sum(ai and not rad for ai, rad in truth)
    c = sum(rad and not ai for ai, rad in truth)
    out = evaluate(store, cfg.monitoring)
    assert list(out.alerts["agreement"]) == ["agreement:cxrreportgen:cxr-v1:pneumothorax"]
    page = TestClient(build_app(cfg)).get("/monitoring")
    assert page.status_code == 200
    assert f'<td class="a">{a}</td><td class="b">{b}</td><td class="c">{c}</td>' in page.text
    assert "1.9.0" not in page.text  # no study named without show_phi

    import csv
    import io

    from node.monitoring.report import as_csv, as_html, report_data

    data = report_data(store, cfg, 30)
    rows = [r for r in csv.DictReader(io.StringIO(as_csv(data))) if r["item"] == "pneumothorax" and r["by"] == "all"]
    assert [(int(r["a"]), int(r["b"]), int(r["c"])) for r in rows] == [(a, b, c)]
    assert float(rows[0]["sensitivity"]) == pytest.approx(a / (a + c), abs=1e-4)
    html = as_html(data, cfg, "the last 30 days")
    assert "Chart.js v4.6.1" in html and "/monitoring/static" not in html  # self-contained


def test_a_report_only_redecision_runs_nothing_again(env, tmp_path: Path, data: Path) -> None:
    import pydicom

    from node.monitoring.sr_door import take_reports
    from support.studies import make_prior_study

    cfg, store = env
    prior = make_prior_study(tmp_path / "s", data)
    frontal = pydicom.dcmread(prior.frontal, stop_before_pixels=True)
    sr = pydicom.dcmread(prior.radiologist_sr)
    from node.store.records import InstanceRecord

    def record(ds, path) -> None:
        store.record_instances([InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(path), size_bytes=1, calling_ae="MOD")], 1.0)

    record(frontal, prior.frontal)
    svc = SimpleNamespace(cfg=cfg, store=store)
    rest, fresh = take_reports(svc, prior.study_uid, [frontal])
    assert fresh and rest == [frontal]  # no job yet: images are new
    store.create_jobs(prior.study_uid, 1, [("chest", "cxr", [str(frontal.SeriesInstanceUID)])])
    time.sleep(0.01)
    record(sr, prior.radiologist_sr)
    rest, fresh = take_reports(svc, prior.study_uid, [frontal, sr])
    assert rest == [frontal] and not fresh  # only the report came since the jobs were made
    (row,) = table(store, monitoring.reports)
    assert row["door"] == "dicom" and row["study_uid"] == prior.study_uid and row["text"] is None


def test_one_evaluation_at_a_time_and_everything_ages_out(env) -> None:
    _, store = env
    assert store.claim_monitor_evaluation(3600) is True
    assert store.claim_monitor_evaluation(3600) is False  # another node (or sweep) within the hour: not again
    assert store.claim_monitor_evaluation(3600, force=True) is True
    store.monitor_write(observation_write(obs_row("1.8.1", job=1)))
    store.monitor_write(report_write(rep_row("k1", study="1.8.1")))
    store.record_call("cxr", "cxrreportgen", "error", status=500)
    assert store.purge_monitoring(unmatched_seconds=DAY, keep_seconds=DAY) == \
        {"reports": 0, "observations": 0, "calls": 0, "drift": 0, "alerts": 0}
    with store.engine.begin() as conn:
        conn.execute(monitoring.observations.update().values(observed_at=time.time() - 2 * DAY))
        conn.execute(monitoring.reports.update().values(received_at=time.time() - 2 * DAY))
        conn.execute(monitoring.calls.update().values(at=time.time() - 2 * DAY))
    assert store.purge_monitoring(unmatched_seconds=30 * DAY, keep_seconds=DAY) == \
        {"reports": 1, "observations": 1, "calls": 1, "drift": 0, "alerts": 0}
