"""`retract` of results that never left: the note is kept (they count as rejected), no destination gets it, and
their pending outbox rows are dropped so they never leave; the same request again is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.config import parse_config
from node.flow.retract import RetractError, retract
from node.store.schema import outbox
from node.store.state import Store
from support.testdb import database_url


class NoQueue:
    def __init__(self) -> None:
        self.deliveries: list[str] = []

    def enqueue_delivery(self, destination: str, delay: float = 0.0) -> None:
        self.deliveries.append(destination)


def test_retract_before_anything_was_sent(tmp_path: Path, data: Path) -> None:
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:9/score",
                                              "auth": "none"}},
                        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 9}},
                        "rules": [{"name": "chest", "match": {"Modality": "CR"}, "endpoint": "cxr",
                                   "send_to": ["pacs"]}]})
    store = Store.open(database_url(tmp_path))
    sr_path = tmp_path / "sr.dcm"
    shutil.copy(data / "reference" / "highdicom_sr_tid1500.dcm", sr_path)
    sr = pydicom.dcmread(sr_path, stop_before_pixels=True)
    study = str(sr.StudyInstanceUID)
    (job_id,) = store.create_jobs(study, 1, [("chest", "cxr", [str(sr.SeriesInstanceUID)])])
    store.claim_job(job_id, "me", 60)
    assert store.finish_job(job_id, "me", state="done", outcome="ok", destinations=["pacs"], new_results=[{
        "sop_instance_uid": str(sr.SOPInstanceUID), "study_uid": study, "series_uid": str(sr.SeriesInstanceUID),
        "sop_class_uid": str(sr.SOPClassUID), "kind": "sr", "path": str(sr_path)}])

    queue = NoQueue()
    with pytest.raises(RetractError, match="no result"):
        retract(cfg, store, queue, study, rule="other", reason="safety")
    report = retract(cfg, store, queue, study, reason="safety")
    assert report.rejected == [str(sr.SOPInstanceUID)]
    assert report.destinations == [] and queue.deliveries == []
    assert report.unsent_dropped == [str(sr.SOPInstanceUID)]
    with store.engine.connect() as conn:
        rows = conn.execute(select(outbox.c.result_uid, outbox.c.state)).all()
    assert rows == []  # the SR's pending row is gone and the note has none
    with pytest.raises(RetractError, match="rejected already"):
        retract(cfg, store, queue, study, reason="safety")
