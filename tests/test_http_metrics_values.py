"""docs/operations.md's metrics, each error label and ``/readyz``'s failures, checked against what this test caused.

A node with the HTTP side, the emulator (a fault script per study) and a mini PACS that answers scripted C-STORE
statuses and logs every answer. The studies go one at a time, so each fault meets the study it was scripted for:

* S1: its model call times out, then the connection is closed, then it is answered; of its two results the PACS
  answers the first C-STORE 0xA700 (out of resources: retried after the destination's backoff) and the second
  0xA900 (the data set does not match: parked). While the first waits, the outbox is scraped.
* S2: 503 on every attempt of its first job attempt: the job is released to be retried, and the retry is answered.
* S3, S4: their replies are not JSON: their jobs fail. Then the worker is stopped (SIGSTOP), ``dicom-node retry
  --jobs --failed`` queues both again, the queue is scraped, and the worker goes on (SIGCONT).
* A C-STORE whose data set's SOP Instance UID differs from the request's is answered 0xA900 (quarantined).

Every expected value comes from what the test did or what the peers logged: the emulator's request log (each call
names its job and attempt in ``x-ms-client-request-id``), the PACS's answers, the test's own clock. A second node
has a disk floor above any disk (every C-STORE 0xA700, ``/readyz`` 503 on the spool) and its queue on a Redis the
test stops and starts again (``/readyz`` 503 on the queue).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from pynetdicom import AE, _config as pynetdicom_config

from node.config import load_config

from support.dcmtk import storescu
from support.nodekit import db_rows, send, status_json, study_uid_of, wait_until
from support.nodeproc import NodeProcess, node_config
from support.pacs import MiniPACS
from support.ports import free_port
from support.redis_server import RedisServer
from support.studies import derive_cxr_study

pytestmark = pytest.mark.slow

READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 3
SEND_BACKOFF = 5.0  # the destination's backoff: how long S1's first result waits after its 0xA700
RULE = "chest-xray-findings"


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(base + "/metrics", timeout=30).text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return None


def present(samples: dict, name: str) -> bool:
    return any(n == name for n, _ in samples)


def call_key(entry: dict) -> str:
    """``dn-<job>-<attempt>``: the job attempt a model call belongs to."""
    return entry["headers"].get("x-ms-client-request-id") or ""


@dataclass
class Run:
    """What the module fixture did and saw; each test checks one part of it."""

    tmp: Path
    data: Path
    base: str = ""
    node: NodeProcess | None = None
    emulator: Any = None
    pacs: MiniPACS | None = None
    studies: dict[str, str] = field(default_factory=dict)  # S1..S4 -> Study Instance UID
    sent_at: dict[str, float] = field(default_factory=dict)
    calls: dict[str, list[dict]] = field(default_factory=dict)  # study -> its emulator log entries
    snapshots: dict[str, tuple[float, dict]] = field(default_factory=dict)  # name -> (time scraped, samples)
    retried_between: tuple[float, float] = (0.0, 0.0)


def scrape_now(run: Run, name: str) -> dict:
    t = time.time()
    run.snapshots[name] = (t, scrape(run.base))
    return run.snapshots[name][1]


def send_study(run: Run, name: str, faults: list[dict], frontal: str) -> str:
    """Script the faults the study's model calls meet, then send it (its frontal image only)."""
    files = derive_cxr_study(run.tmp / name, run.data / "cxr" / frontal, None, patient_id=f"MET-{name}")
    uid = study_uid_of(files[0])
    run.studies[name] = uid
    run.emulator.script_faults(faults)
    run.sent_at[name] = time.time()
    send(run.node, files)
    return uid


def job_state(run: Run, study: str) -> str | None:
    jobs = [j for j in status_json(run.node)["recent_jobs"] if j["study_uid"] == study]
    return jobs[0]["state"] if jobs else None


def worker_pid(run: Run) -> int:
    return int((load_config(run.node.config_path).node_dir / "worker.pid").read_text())


def cstore_with_mismatched_uid(run: Run) -> int:
    """C-STORE a file whose file meta (which pynetdicom sends as the request's Affected SOP Instance UID) names
    another instance than its data set does; returns the status the node answered."""
    ds = pydicom.dcmread(run.data / "cxr" / "cr_pa_mono1_uncompressed.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = run.tmp / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)  # as is: enforcing the format would make the two UIDs agree
    ae = AE(ae_title="MISMATCH")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the command's UID from the file meta, as read
    try:
        assoc = ae.associate("127.0.0.1", run.node.port, ae_title="AINODE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
    return int(status.Status)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Run]:
    from node.emulator.server import EmulatorServer

    r = Run(tmp_path_factory.mktemp("metrics-values"), data)
    r.emulator = EmulatorServer("127.0.0.1", 0).start()
    r.pacs = MiniPACS([0xA700, 0xA900]).start()
    port = free_port()
    cfg = node_config(r.tmp, endpoint_url=r.emulator.url, pacs=("PACS", r.pacs.port), quiet=0.5,
                      http={"host": "127.0.0.1", "port": port})
    cfg["endpoints"]["cxr"].update(timeout_seconds=READ_TIMEOUT, max_attempts=MAX_ATTEMPTS,
                                   backoff_initial_seconds=0.2, backoff_max_seconds=0.5,
                                   retry_initial_seconds=1, retry_max_seconds=2)
    cfg["destinations"]["pacs"].update(backoff_initial_seconds=SEND_BACKOFF, backoff_max_seconds=SEND_BACKOFF)
    r.node = NodeProcess(r.tmp, cfg).start()
    r.base = f"http://127.0.0.1:{port}"
    stopped = False
    try:
        wait_until(lambda: http_status(r.base + "/readyz") == 200, 60, "the node ready")
        scrape_now(r, "start")

        # S1: a timeout, a closed connection, then an answer; the PACS answers 0xA700 then 0xA900.
        s1 = send_study(r, "S1", [{"stall_seconds": READ_TIMEOUT + 1}, {"close": True}], "cr_pa_jpeg_baseline.dcm")
        wait_until(lambda: len(r.pacs.answered) >= 2, 90, "S1's two results at the PACS")
        scrape_now(r, "s1-waiting")  # S1's first result waits SEND_BACKOFF seconds for its next try
        wait_until(lambda: len(r.pacs.answered) >= 3, 60, "S1's first result sent again")

        # S2: every call of its first job attempt is refused: the job is retried.
        s2 = send_study(r, "S2", [{"status": 503, "repeat": MAX_ATTEMPTS}], "cr_pa_mono1_uncompressed.dcm")
        wait_until(lambda: len(r.pacs.answered) >= 5, 90, "S2's results at the PACS")

        # S3, S4: not JSON: failed.
        s3 = send_study(r, "S3", [{"malformed": True}], "cr_pa_jpeg_baseline.dcm")
        wait_until(lambda: job_state(r, s3) == "failed", 60, "S3's job failed")
        s4 = send_study(r, "S4", [{"malformed": True}], "cr_pa_mono1_uncompressed.dcm")
        wait_until(lambda: job_state(r, s4) == "failed", 60, "S4's job failed")
        scrape_now(r, "failed")

        # The worker stops; the operator queues the failed jobs again: they wait in the queue.
        pid = worker_pid(r)
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "node.cli", "retry", "--jobs", "--failed", "--config",
                              str(r.node.config_path)], capture_output=True, text=True, timeout=60)
        r.retried_between = (t0, time.time())
        assert out.returncode == 0 and "2 job(s) queued again" in out.stdout, out.stdout + out.stderr
        time.sleep(2.0)  # the queued jobs are overdue by now
        scrape_now(r, "queued")
        os.kill(pid, signal.SIGCONT)
        stopped = False
        wait_until(lambda: len(r.pacs.answered) >= 9, 90, "S3's and S4's results at the PACS")
        assert cstore_with_mismatched_uid(r) == 0xA900
        time.sleep(1.0)  # nothing else is due; a late send would show now
        calls = r.emulator.requests
        for name, uid in r.studies.items():
            r.calls[name] = calls_of(r, uid, calls)
        scrape_now(r, "end")
        yield r
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        r.node.stop()
        r.pacs.stop()
        r.emulator.stop()


def calls_of(run: Run, study: str, calls: list[dict]) -> list[dict]:
    """The emulator's entries of the calls made for the study's jobs (named in their request ids)."""
    jobs = {uid[:24] for (uid,) in db_rows(run.node, "SELECT job_uid FROM jobs WHERE study_uid = ?", study)}
    return [c for c in calls if call_key(c).split("-")[1:2] and call_key(c).split("-")[1] in jobs]



def attempts(calls: list[dict], retried_at: float) -> list[list[dict]]:
    """The calls grouped by job attempt (``dicom-node retry`` starts a job's attempts from 1 again: split there)."""
    groups: dict[tuple[str, bool], list[dict]] = {}
    for c in calls:
        groups.setdefault((call_key(c), c["time"] >= retried_at), []).append(c)
    return list(groups.values())


def timed_out(c: dict) -> bool:
    return bool(c["fault"]) and c["fault"].get("stall_seconds", 0) > READ_TIMEOUT


def test_endpoint_responses_retries_and_their_error_labels(run: Run) -> None:
    m = run.snapshots["end"][1]
    calls = [c for name in run.studies for c in run.calls[name]]
    assert len(calls) == len(run.emulator.requests), "every call belongs to one of the studies"
    groups = attempts(calls, run.retried_between[1])
    timeouts = [c for c in calls if timed_out(c)]
    closed = [c for c in calls if c["state"] == "closed"]
    assert len(timeouts) == 1 and len(closed) == 1, calls  # S1's two faults, met as scripted
    assert total(m, "dicom_node_endpoint_responses_total", endpoint="cxr", code="timeout") == len(timeouts)
    assert total(m, "dicom_node_endpoint_responses_total", endpoint="cxr", code="network-error") == len(closed)
    for code in {c["status"] for c in calls if c["status"] is not None and not timed_out(c)}:
        answered = [c for c in calls if c["status"] == code and not timed_out(c)]
        assert total(m, "dicom_node_endpoint_responses_total", endpoint="cxr", code=str(code)) == len(answered)
    assert total(m, "dicom_node_endpoint_request_seconds_count", endpoint="cxr") == len(calls)
    # a call followed by another one of the same job attempt was retried by the client
    assert total(m, "dicom_node_retries_total", kind="endpoint", target="cxr") == sum(len(g) - 1 for g in groups)
    assert sum(len(g) - 1 for g in groups) == 4  # S1: after the timeout and the close; S2: after two 503s


def test_job_outcomes_failed_jobs_and_studies_per_state(run: Run) -> None:
    end = run.snapshots["end"][1]
    failed = run.snapshots["failed"][1]
    groups = attempts([c for name in run.studies for c in run.calls[name]], run.retried_between[1])
    served = [g for g in groups if g[-1]["status"] == 200 and not g[-1]["fault"]]
    not_json = [g for g in groups if g[-1]["fault"] and g[-1]["fault"].get("malformed")]
    exhausted = [g for g in groups if g[-1]["status"] == 503]
    assert (len(served), len(not_json), len(exhausted)) == (4, 2, 1), groups
    assert total(end, "dicom_node_jobs_total", rule=RULE, outcome="done") == len(served)
    assert total(end, "dicom_node_jobs_total", rule=RULE, outcome="failed") == len(not_json)
    assert total(end, "dicom_node_jobs_total", rule=RULE, outcome="retry") == len(exhausted)
    assert total(end, "dicom_node_retries_total", kind="job", target=RULE) == len(exhausted)
    # while S3 and S4 had failed: two failed jobs, two failed studies, the two others done
    assert total(failed, "dicom_node_failed_jobs", rule=RULE) == len(not_json)
    assert total(failed, "dicom_node_studies", state="failed") == len(not_json)
    assert total(failed, "dicom_node_studies", state="done") == len(run.studies) - len(not_json)
    # once run again and answered: no failed job, every study done (the mismatched instance made none)
    assert total(end, "dicom_node_failed_jobs") == 0
    assert total(end, "dicom_node_studies", state="done") == len(run.studies)
    assert total(end, "dicom_node_studies") == len(run.studies)
    assert total(end, "dicom_node_studies_completed_total") == len(run.studies)


def test_queue_tasks_and_lag_while_the_worker_is_stopped(run: Run) -> None:
    t, m = run.snapshots["queued"]
    start, end = run.retried_between
    # the two jobs `retry` queued wait in the queue (the stopped worker takes nothing)
    assert total(m, "dicom_node_queue_tasks") == 2
    assert total(m, "dicom_node_failed_jobs") == 0 and total(m, "dicom_node_studies", state="complete") == 2
    # they have been due since `retry` ran: the lag is the time since then
    lag = total(m, "dicom_node_queue_lag_seconds")
    assert t - end - 0.01 <= lag <= t - start + 0.01, (lag, t - end, t - start)
    assert total(run.snapshots["end"][1], "dicom_node_queue_lag_seconds") < 1.0  # taken once the worker went on
    assert total(run.snapshots["end"][1], "dicom_node_queue_tasks") == 0


def test_sends_their_statuses_outbox_age_and_parked(run: Run) -> None:
    end = run.snapshots["end"][1]
    answers = Counter(status for _, _, status in run.pacs.answered)
    assert answers == {0xA700: 1, 0xA900: 1, 0x0000: 7}, answers  # 4 studies x 2 results, 1 of them parked
    assert total(end, "dicom_node_sends_total", destination="pacs", status="0xA700", verdict="retry") == 1
    assert total(end, "dicom_node_sends_total", destination="pacs", status="0xA900", verdict="parked") == 1
    assert total(end, "dicom_node_sends_total", destination="pacs", status="0x0000", verdict="delivered") == 7
    assert total(end, "dicom_node_retries_total", kind="delivery", target="pacs") == answers[0xA700]
    assert total(end, "dicom_node_parked_results", destination="pacs") == answers[0xA900]
    assert total(end, "dicom_node_outbox_depth", destination="pacs") == 0
    assert total(end, "dicom_node_outbox_oldest_age_seconds", destination="pacs") == 0
    # S1's first result, waiting after its 0xA700: made before the PACS first saw it, after S1 was sent
    t, waiting = run.snapshots["s1-waiting"]
    first_seen = run.pacs.answered[0][0]
    age = total(waiting, "dicom_node_outbox_oldest_age_seconds", destination="pacs")
    assert t - first_seen <= age <= t - run.sent_at["S1"], (age, t - first_seen, t - run.sent_at["S1"])
    assert total(waiting, "dicom_node_outbox_depth", destination="pacs") == 1


def test_cstore_statuses_answered_by_the_node(run: Run) -> None:
    end = run.snapshots["end"][1]
    assert total(end, "dicom_node_cstore_responses_total", status="0xA900") == 1
    assert total(end, "dicom_node_quarantined_total", reason="uid-mismatch") == 1
    assert total(end, "dicom_node_cstore_responses_total", status="0x0000") == len(run.studies)


def test_readyz_fails_on_the_spool_floor_and_on_the_queue(tmp_path: Path, data: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    port = free_port()
    cfg = node_config(tmp_path, endpoint_url="http://127.0.0.1:9/score", pacs=None,
                      http={"host": "127.0.0.1", "port": port}, queue={"url": redis.url})
    cfg["node"]["min_free_disk_mb"] = 2 ** 40  # a floor above any disk: a TiB of MiB
    node = NodeProcess(tmp_path, cfg).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_status(base + "/healthz") == 200, 60, "the HTTP side")
        refused = storescu("127.0.0.1", node.port, [data / "cxr" / "cr_pa_mono1_uncompressed.dcm"], extra=["-v"])
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0 and "Refused: OutOfResources" in said, said
        m = scrape(base)
        assert total(m, "dicom_node_cstore_responses_total", status="0xA700") == 1
        assert total(m, "dicom_node_instances_received_total") == 0
        ready = httpx.get(base + "/readyz", timeout=30)
        checks = ready.json()["checks"]
        assert ready.status_code == 503 and not checks["spool"]["ok"] and checks["queue"]["ok"], ready.text
        probe = subprocess.run([sys.executable, "-m", "node.cli", "healthcheck", "--config", str(node.config_path)],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 1 and "not ready" in probe.stderr, probe.stderr

        redis.stop()
        checks = httpx.get(base + "/readyz", timeout=30).json()["checks"]
        assert not checks["queue"]["ok"] and "not reachable" in checks["queue"]["detail"], checks
        assert not present(scrape(base), "dicom_node_queue_tasks")
        redis = RedisServer(tmp_path / "redis", port=redis.port).start()
        checks = wait_until(lambda: (c := httpx.get(base + "/readyz", timeout=30).json()["checks"])["queue"]["ok"]
                            and c, 30, "the queue reachable again")
        assert not checks["spool"]["ok"]
    finally:
        node.stop()
        redis.stop()
