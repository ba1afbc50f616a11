"""Report rows on the status pages (study page, outbox page) and in the metrics: the HTTP app in process."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import insert
from starlette.testclient import TestClient

from node.config import parse_config
from node.http.app import build_app
from node.reports.job import build_report, report_path
from node.reports.read import read_results
from node.store.schema import jobs, outbox, results, studies
from node.store.spool import Spool
from node.store.state import Store
from support import reports


def test_a_report_shows_on_the_study_and_outbox_pages(tmp_path: Path, data: Path) -> None:
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var"), "min_free_disk_mb": 0},
                        "destinations": {"ris": {"type": "hl7v2", "host": "127.0.0.1", "port": 2575}},
                        "http": {"port": 18098}}, tmp_path / "n.yaml", tmp_path)
    spool = Spool(cfg.storage_dir)
    spool.create()
    store = Store.open(cfg.database_url)
    made = reports.cxr_report(data)
    study = str(made.source.StudyInstanceUID)
    job = {"id": 1, "job_uid": "e" * 32, "study_uid": study, "rule_name": "chest", "study_version": 1}
    report = build_report(job=job, content=read_results(made.results, made.source), previous=None)
    path = report_path(spool.result_path(study, report.uid))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(report.to_json())
    t = time.time()
    with store.engine.begin() as conn:
        conn.execute(insert(studies).values(study_uid=study, state="done", version=1, first_received_at=t,
                                            last_received_at=t, completed_at=t))
        conn.execute(insert(jobs).values(id=1, job_uid=job["job_uid"], study_uid=study, study_version=1,
                                         rule_name="chest", endpoint="cxr", series_uids="[]", state="done",
                                         attempts=1, next_attempt_at=t, created_at=t, updated_at=t))
        conn.execute(insert(results).values(sop_instance_uid=report.uid, job_id=1, study_uid=study, series_uid="",
                                            sop_class_uid="", kind="report", path=str(path), created_at=t))
        conn.execute(insert(outbox).values(result_uid=report.uid, destination="ris", state="parked", attempts=1,
                                           next_attempt_at=t, last_status="AR", created_at=t,
                                           error="rejected by the receiver: unknown patient"))
    client = TestClient(build_app(cfg))
    page = client.get(f"/studies/{study}").text
    assert 'data-kind="report"' in page and "preliminary report to the RIS/EHR, study version 1" in page
    assert reports.FINDINGS[0].text in page and "sent to ris: parked (AR)" in page
    assert "rejected by the receiver: unknown patient" in client.get("/outbox").text
    assert 'dicom_node_parked_results{destination="ris"} 1.0' in client.get("/metrics").text
    store.engine.dispose()
