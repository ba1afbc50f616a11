"""Outages and leases, on a real database: the endpoint circuit, the retry horizon, parking, retention, heartbeats.

The end-to-end behaviour (a real node, the emulator, Orthanc) is in tests/test_faults_outage.py; here each rule
is checked on the store and on ``run_job`` with a scripted pipeline, quickly.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.config import parse_config
from node.flow import run as run_module
from node.flow.heartbeat import Heartbeat
from node.flow.intake import Intake
from node.flow.services import Services
from node.invoke.client import EndpointError
from node.store.spool import Spool
from node.store.state import InstanceRecord, Store

pytestmark = pytest.mark.faults


class FakeQueue:
    """Records what run_job enqueues (job id, delay) instead of running it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[int, float]] = []
        self.deliveries: list[str] = []

    def enqueue_job(self, job_id: int, delay: float = 0.0) -> None:
        self.jobs.append((job_id, delay))

    def enqueue_delivery(self, destination: str, delay: float = 0.0) -> None:
        self.deliveries.append(destination)


def make_cfg(tmp: Path, **endpoint: Any):
    return parse_config({
        "node": {"storage_dir": str(tmp / "var"), "instance_id": "t"},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none",
                              "retry_initial_seconds": 10, "retry_max_seconds": 40, **endpoint}},
        "destinations": {},
        "rules": [{"name": "normal", "endpoint": "cxr"}, {"name": "urgent", "endpoint": "cxr", "priority": "urgent"}],
    })


def new_job(store: Store, study: str, rule: str = "normal", path: Path | None = None) -> int:
    if path is not None:
        store.record_instances([InstanceRecord(f"{study}.1.1", study, f"{study}.1", "1.2", "1.2.840.10008.1.2.1",
                                               str(path), 1, "MOD")], quiet_seconds=0)
        assert store.begin_decision(study, 0.0)[0] == "complete"
    return store.create_jobs(study, 1, [(rule, "cxr", [f"{study}.1"])])[0]


def job_row(store: Store, job_id: int) -> dict:
    row = store.job(job_id)
    assert row is not None
    return row


@pytest.fixture()
def svc(tmp_path: Path, data: Path) -> Services:
    cfg = make_cfg(tmp_path, give_up_after_seconds=1000)
    store = Store.open(cfg.database_url)
    queue = FakeQueue()
    return Services(cfg=cfg, store=store, queue=queue, spool=Spool(cfg.storage_dir),  # type: ignore[arg-type]
                    intake=Intake(cfg, store, None), owner="t:1:a")


@pytest.fixture()
def image(tmp_path: Path, data: Path) -> Path:
    ds = pydicom.dcmread(data / "cxr" / "cr_pa_jpeg_baseline.dcm")
    out = tmp_path / "img.dcm"
    ds.save_as(out)
    return out


def script_pipeline(monkeypatch: pytest.MonkeyPatch, *outcomes: BaseException | None) -> list[int]:
    """Make every model's pipeline raise the next scripted exception (None: a result-less success)."""
    calls: list[int] = []
    todo = list(outcomes)

    def pipeline(ctx) -> Any:
        calls.append(ctx.job["id"])
        exc = todo.pop(0)
        if exc is not None:
            raise exc
        from node.models.base import JobOutput

        return JobOutput(state="done", outcome="EMULATED ok", results=[])

    monkeypatch.setattr(run_module, "pipeline_for", lambda model: pipeline)
    return calls


def down(retry_after: float | None = None) -> EndpointError:
    return EndpointError("endpoint cxr: HTTP 503: Service unavailable", status=503, permanent=False,
                         retry_after=retry_after)


def test_a_retry_after_longer_than_the_old_cap_reschedules_the_job_not_fails_it(
        svc: Services, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = script_pipeline(monkeypatch, down(retry_after=360))
    job = new_job(svc.store, "1.2.3", path=image)
    t0 = time.time()
    run_module.run_job(svc, job)
    row = job_row(svc.store, job)
    assert row["state"] == "pending" and "will retry" in row["outcome"], row
    assert row["next_attempt_at"] >= t0 + 359, "the endpoint's Retry-After (360 s) is honoured"
    assert row["give_up_at"] == pytest.approx(t0 + 1000, abs=5)
    circuit = svc.store.circuit("cxr")
    assert circuit["state"] == "open" and circuit["retry_at"] >= t0 + 359
    assert svc.queue.jobs and svc.queue.jobs[-1][0] == job and svc.queue.jobs[-1][1] > 350, "probe scheduled"
    assert calls == [job]


def test_an_open_circuit_holds_every_job_without_a_call_then_one_probe_then_the_backlog_in_order(
        svc: Services, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = script_pipeline(monkeypatch, down(), None)
    first = new_job(svc.store, "1.2.1", path=image)
    run_module.run_job(svc, first)  # fails: the circuit opens
    others = [new_job(svc.store, f"1.2.{i}", path=image) for i in range(2, 6)]
    urgent = new_job(svc.store, "1.2.9", rule="urgent", path=image)
    for job in [*others, urgent]:
        run_module.run_job(svc, job)
    assert calls == [first], "no call while the circuit is open"
    for job in others:
        row = job_row(svc.store, job)
        assert row["state"] == "pending" and row["attempts"] == 0 and "waiting for endpoint cxr" in row["outcome"]
    # the probe is due: the oldest waiting job (the one that failed) probes, a second job meanwhile waits
    with svc.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE circuits SET retry_at = 0")
    assert svc.store.circuit_admit("cxr", first) == ("probe", pytest.approx(svc.store.circuit("cxr")))
    svc.store.claim_job(first, "t:1:b", 60)  # the probe runs (its lease is alive)
    assert svc.store.circuit_admit("cxr", others[0])[0] == "wait", "one probe at a time"
    svc.store.release_job(first, "t:1:b", retry_in=0, outcome="x")
    svc.queue.jobs.clear()
    run_module.run_job(svc, first)  # the probe succeeds: the circuit closes, the backlog drains
    assert calls == [first, first]
    assert svc.store.circuit("cxr") is None
    assert [j for j, _ in svc.queue.jobs] == [urgent, *others], "urgent rules first, then oldest first"


def test_a_job_past_its_horizon_is_parked_kept_and_retried(tmp_path: Path, image: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, give_up_after_seconds=0.5)
    store = Store.open(cfg.database_url)
    svc = Services(cfg=cfg, store=store, queue=FakeQueue(), spool=Spool(cfg.storage_dir),  # type: ignore[arg-type]
                   intake=Intake(cfg, store, None), owner="t:1:a")
    script_pipeline(monkeypatch, down(retry_after=0), down(retry_after=0), None)
    job = new_job(store, "1.2.3", path=image)
    run_module.run_job(svc, job)
    assert job_row(store, job)["state"] == "pending"
    time.sleep(0.6)
    run_module.run_job(svc, job)
    row = job_row(store, job)
    assert row["state"] == "parked" and "give_up_after_seconds" in row["outcome"], row
    assert any("ALERT: job" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    audit = (Path(cfg.storage_dir) / "audit.jsonl").read_text()
    assert '"event":"job-parked"' in audit and '"outcome":8' in audit  # 8: serious failure (DICOM audit)
    summary = store.summary()
    assert [j["id"] for j in summary["parked_jobs"]] == [job]
    with store.engine.begin() as conn:  # decided long ago: retention would purge a finished study
        conn.exec_driver_sql("UPDATE studies SET completed_at = 0")
    assert store.purge_delivered(0, 0) == 0, "a study with a parked job is never purged"
    assert summary["studies"] == {"complete": 1}
    assert [r["id"] for r in store.retry_jobs(study_uid="1.2.3")] == [job]
    row = job_row(store, job)
    assert (row["state"], row["attempts"], row["give_up_at"]) == ("pending", 0, None)
    run_module.run_job(svc, job)
    assert job_row(store, job)["state"] == "done"
    assert store.summary()["studies"] == {"done": 1}


def test_a_failed_study_is_kept_keep_failed_hours(svc: Services, image: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    script_pipeline(monkeypatch, EndpointError("HTTP 400", status=400, permanent=True))
    job = new_job(svc.store, "1.2.3", path=image)
    run_module.run_job(svc, job)
    assert job_row(svc.store, job)["state"] == "failed"
    with svc.store.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE studies SET completed_at = {time.time() - 3 * 3600}")
    assert svc.store.purge_delivered(3600, 24 * 3600) == 0, "failed 3 h ago, kept 24 h"
    assert svc.store.purge_delivered(3600, 2 * 3600) == 1


def test_a_heartbeat_keeps_a_short_lease_held_and_stops_with_the_work(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    store = Store.open(cfg.database_url)
    job = new_job(store, "1.2.3")
    lease = 0.4
    assert store.claim_job(job, "t:1:a", lease) is not None
    with Heartbeat(lambda: store.renew_job_lease(job, "t:1:a", lease), lease, "job") as beat:
        time.sleep(lease * 4)  # four lease periods
        assert store.claim_job(job, "t:2:b", lease) is None, "a renewed lease is never taken over"
    assert beat.beats >= 4 and not beat.lost
    time.sleep(lease * 1.5)
    assert store.claim_job(job, "t:2:b", lease) is not None, "a lease nobody renews expires"


def test_a_dead_processes_leases_are_released_and_only_its(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    store = Store.open(cfg.database_url)
    dead, alive = new_job(store, "1.2.3"), new_job(store, "1.2.4")
    store.claim_job(dead, "t:41:aaaa", 600)
    store.claim_job(alive, "t:4:bbbb", 600)
    assert store.release_leases_of("t", 41) == 1
    assert job_row(store, dead)["state"] == "pending" and job_row(store, dead)["lease_owner"] is None
    assert job_row(store, alive)["lease_owner"] == "t:4:bbbb"


def test_retry_jobs_takes_failed_ones_only_when_asked_and_lets_the_circuit_probe_now(
        svc: Services, image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script_pipeline(monkeypatch, EndpointError("HTTP 400", status=400, permanent=True), down(retry_after=3600))
    failed, waiting = new_job(svc.store, "1.2.3", path=image), new_job(svc.store, "1.2.4", path=image)
    run_module.run_job(svc, failed)
    run_module.run_job(svc, waiting)
    assert svc.store.summary()["studies"] == {"failed": 1, "complete": 1}
    assert svc.store.retry_jobs() == [], "only parked jobs without --failed"
    assert [r["id"] for r in svc.store.retry_jobs(include_failed=True, rule_name="normal")] == [failed]
    assert job_row(svc.store, failed)["state"] == "pending"
    assert svc.store.summary()["studies"] == {"complete": 2}, "the failed study is open again"
    assert svc.store.circuit_admit("cxr", failed)[0] == "wait"
    svc.store.circuit_probe_now(["cxr"])
    assert svc.store.circuit_admit("cxr", failed)[0] == "probe"


def test_a_heartbeat_keeps_an_outbox_batch_leased(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    store = Store.open(cfg.database_url)
    job = new_job(store, "1.2.3")
    store.claim_job(job, "t:1:a", 60)
    row = {"sop_instance_uid": "1.2.3.9.1", "study_uid": "1.2.3", "series_uid": "1.2.3.9", "sop_class_uid": "1.2",
           "kind": "sr", "path": str(tmp_path / "r.dcm")}
    assert store.finish_job(job, "t:1:a", state="done", outcome="ok", new_results=[row], destinations=["pacs"])
    lease = 0.4
    batch = store.claim_outbox("pacs", "t:1:a", lease)
    token = batch[0]["lease_owner"]
    with Heartbeat(lambda: store.renew_outbox_lease(token, lease), lease, "send"):
        time.sleep(lease * 4)
        assert store.claim_outbox("pacs", "t:2:b", lease) == [], "a renewed batch is never taken over"
    time.sleep(lease * 1.5)
    assert len(store.claim_outbox("pacs", "t:2:b", lease)) == 1


def test_the_sweep_removes_what_dead_receives_left_in_tmp_and_nothing_else(svc: Services,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from node.flow import sweep

    tmp = svc.spool.tmp
    tmp.mkdir(parents=True, exist_ok=True)
    two_days_ago = time.time() - 2 * 86400
    files = {
        "tmpab12cd.dcm": (two_days_ago, False),  # a receive killed mid-transfer, two days ago: removed
        "stow-body-0f0f": (two_days_ago, False),  # a STOW upload that died: removed
        "tmpnow.dcm": (time.time(), True),  # a receive in progress: kept
        "spare-other_node-4242-x.dcm": (two_days_ago, True),  # an idle node's spare: its node's business
    }
    for name, (mtime, _) in files.items():
        (tmp / name).write_bytes(b"partial" if not name.startswith("spare-") else b"")
        os.utime(tmp / name, (mtime, mtime))
    with caplog.at_level(logging.WARNING, logger="node.flow.sweep"):
        sweep.sweep(svc)
    assert {p.name for p in tmp.iterdir()} == {name for name, (_, kept) in files.items() if kept}
    assert "removed 2 file(s) left in the spool's tmp folder" in caplog.text
