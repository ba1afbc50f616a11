"""Unattended for a month: endpoint outages and dead workers, end to end (a real node, the emulator, storescp).

Results are counted at the peer: dcmtk's ``storescp +uf`` writes one file per C-STORE, so a result sent twice is
two files. A CXRReportGen study gives two results (SR and GSPS). Emulator requests are tied to their job by the
``x-ms-client-request-id`` the node sends (``dn-<job_uid>-<attempt>``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pydicom
import pytest

from support.dcmtk import Storescp
from support.nodekit import db_rows, send, status_json, study_uid_of, wait_until
from support.nodeproc import NodeProcess, node_config
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RESULT_KINDS = ("SR", "PR")  # one SR and one GSPS per CXRReportGen study


class Env:
    """One emulator for the module; a storescp and a node per test."""

    def __init__(self, tmp: Path, data: Path, emulator) -> None:
        self.tmp, self.data, self.emulator = tmp, data, emulator
        self.n = 0

    def study(self) -> list[Path]:
        self.n += 1
        return derive_cxr_study(self.tmp / f"study{self.n}", self.data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                                patient_id=f"OUT-{self.n}")

    def node(self, name: str, pacs: Storescp, *, endpoint: dict, queue: dict | None = None,
             retention: dict | None = None) -> NodeProcess:
        tmp = self.tmp / name
        tmp.mkdir()
        cfg = node_config(tmp, endpoint_url=self.emulator.url, pacs=("PACS", pacs.port), quiet=0.5)
        cfg["endpoints"]["cxr"].update(endpoint)
        cfg["queue"] = {"lease_seconds": 5, **(queue or {})}
        if retention:
            cfg["retention"] = retention
        return NodeProcess(tmp, cfg).start()

    def calls_by_job(self, node: NodeProcess) -> list[int]:
        """The job id of each /score request, in arrival order."""
        by_uid = {uid[:24]: jid for jid, uid in db_rows(node, "SELECT id, job_uid FROM jobs")}
        out = []
        for r in self.emulator.requests:
            m = re.match(r"dn-([0-9a-f]{24})-\d+$", r["headers"].get("x-ms-client-request-id", ""))
            if m and m.group(1) in by_uid:
                out.append(by_uid[m.group(1)])
        return out


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Env]:
    from node.emulator.server import EmulatorServer

    with EmulatorServer("127.0.0.1", 0) as emulator:
        yield Env(tmp_path_factory.mktemp("outage"), data, emulator)


@pytest.fixture()
def pacs(env: Env, tmp_path: Path) -> Iterator[Storescp]:
    env.emulator.reset()
    env.emulator.configure(delay_seconds=0.0)
    with Storescp(tmp_path / "pacs") as scp:
        yield scp


def job_of(node: NodeProcess, study_uid: str) -> dict | None:
    jobs = [j for j in status_json(node)["recent_jobs"] if j["study_uid"] == study_uid]
    return jobs[0] if jobs else None


def settle_and_check(pacs: Storescp, studies: list[str]) -> None:
    """Wait for the results of ``studies``, then check what the PACS received, one file per C-STORE: exactly one
    SR and one GSPS per study, nothing for any other study, no instance twice."""
    want = len(studies) * len(RESULT_KINDS)
    wait_until(lambda: len(pacs.received()) >= want, 90, f"{want} C-STOREs at the PACS")
    time.sleep(2)  # anything sent twice would arrive now
    got = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs.received()]
    sops = Counter(str(ds.SOPInstanceUID) for ds in got)
    assert set(sops.values()) == {1}, f"an instance C-STOREd more than once: {sops}"
    kinds = {study: Counter(str(ds.Modality) for ds in got if ds.StudyInstanceUID == study) for study in studies}
    assert kinds == {study: Counter(RESULT_KINDS) for study in studies}, kinds
    assert len(got) == want, f"results of a study not sent: {[ds.StudyInstanceUID for ds in got]}"


def test_a_retry_after_longer_than_the_calls_own_retries_is_waited_out_and_delivered_once(
        env: Env, pacs: Storescp) -> None:
    # one call per attempt: each 503 ends the attempt, as a Retry-After past the client's cap (300 s) does
    env.emulator.script_faults([{"status": 503, "retry_after": 3, "repeat": 3}])
    node = env.node("retry-after", pacs, endpoint={"max_attempts": 1, "give_up_after_seconds": 120})
    try:
        files = env.study()
        send(node, files)
        settle_and_check(pacs, [study_uid_of(files[0])])  # delivered once
        job = job_of(node, study_uid_of(files[0]))
        assert job["state"] == "done" and job["attempts"] == 4, job  # 3 calls met the 503, the 4th answered
        times = [r["time"] for r in env.emulator.requests]
        assert len(times) == 4
        assert all(b - a >= 2.9 for a, b in zip(times, times[1:])), f"Retry-After: 3 honoured: {times}"
    finally:
        node.stop()


def test_past_give_up_after_seconds_the_job_is_parked_kept_and_retry_jobs_delivers_it(
        env: Env, pacs: Storescp) -> None:
    env.emulator.script_faults([{"status": 503, "repeat": 500}])
    node = env.node("park", pacs, endpoint={"max_attempts": 1, "give_up_after_seconds": 3,
                                            "retry_initial_seconds": 1, "retry_max_seconds": 1},
                    retention={"purge_delivered_after_hours": 0, "keep_failed_hours": 0})
    try:
        files = env.study()
        study = study_uid_of(files[0])
        send(node, files)
        job = wait_until(lambda: (j := job_of(node, study)) and j["state"] == "parked" and j, 60, "the job parked")
        assert "give_up_after_seconds" in job["outcome"], job
        text = node.status()
        assert "ALERT: jobs parked" in text and f"study {study}" in text, text
        assert "ALERT: job" in node.logs()
        node.stop()
        node.start()  # the worker's first sweep purges what retention allows: not a study with a parked job
        wait_until(lambda: "worker started" in (node.tmp / f"node-{node.runs}.log").read_text(), 60,
                   "the restarted worker's first sweep")
        time.sleep(1)
        assert status_json(node)["studies"] == {"complete": 1}, "kept while parked"
        assert db_rows(node, "SELECT count(*) FROM instances")[0][0] == 1
        assert len(pacs.received()) == 0
        env.emulator.reset()  # the endpoint is back
        out = subprocess.run([sys.executable, "-m", "node.cli", "retry", "--jobs", "--study", study, "--config",
                              str(node.config_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "1 job(s) queued again" in out.stdout, out.stdout + out.stderr
        settle_and_check(pacs, [study])
        # Delivered, the study is no longer protected: retention (0 h here) purges it, jobs included, at any sweep.
        job = job_of(node, study)
        if job is None:
            assert db_rows(node, "SELECT count(*) FROM studies WHERE study_uid = ?", study)[0][0] == 0
        else:
            assert job["state"] == "done", job
    finally:
        node.stop()


def test_while_the_endpoint_is_down_only_probes_reach_it_then_the_backlog_drains_oldest_first(
        env: Env, pacs: Storescp) -> None:
    env.emulator.script_faults([{"status": 503, "repeat": 1000}])
    # one worker thread: the drain order is then exactly the order the jobs run in
    node = env.node("circuit", pacs, queue={"workers": 1},
                    endpoint={"max_attempts": 1, "max_concurrency": 1, "give_up_after_seconds": 600,
                              "retry_initial_seconds": 2, "retry_max_seconds": 2})
    n = 5
    try:
        studies = [env.study() for _ in range(n)]
        for files in studies:
            send(node, files)
        uids = [study_uid_of(f[0]) for f in studies]
        wait_until(lambda: len(db_rows(node, "SELECT id FROM jobs")) == n, 60, "every study's job")
        time.sleep(5)  # a few probe windows while the endpoint is down
        down_calls = env.calls_by_job(node)
        first_job = min(j for (j,) in db_rows(node, "SELECT id FROM jobs"))
        assert down_calls and set(down_calls) == {first_job}, f"only the probe (oldest job) calls: {down_calls}"
        assert len(down_calls) <= 8, down_calls  # one probe per 1..2 s window, not one call per job
        assert "endpoints unavailable" in node.status()
        env.emulator.reset()  # the endpoint is back
        settle_and_check(pacs, uids)  # all delivered, once
        order = {jid: uid for jid, uid in db_rows(node, "SELECT id, study_uid FROM jobs")}
        ok_calls = [order[j] for j in env.calls_by_job(node)]
        assert ok_calls == uids, "oldest first"
        assert status_json(node)["circuits"] == []
    finally:
        node.stop()


def worker_pid(node: NodeProcess) -> int:
    m = re.findall(r"worker process (\d+) started", node.logs())
    assert m, node.logs()
    return int(m[-1])


def test_a_killed_workers_leases_are_released_at_once_by_serve(env: Env, pacs: Storescp) -> None:
    env.emulator.configure(delay_seconds=5.0)
    lease = 600.0  # far longer than this test: only serve's release can explain the re-run
    node = env.node("kill", pacs, queue={"lease_seconds": lease}, endpoint={"timeout_seconds": 60})
    try:
        files = env.study()
        send(node, files)
        wait_until(lambda: len(env.emulator.requests) == 1, 60, "the model call to start")
        pid = worker_pid(node)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(env.emulator.requests) == 2, 60, "the job to run again")
        logs = node.logs()
        assert f"released 1 lease(s) of dead worker process {pid}" in logs, logs
        assert logs.index(f"released 1 lease(s) of dead worker process {pid}") < logs.rindex("worker started")
        calls = env.calls_by_job(node)
        assert len(calls) == 2 and calls[0] == calls[1], "the same job, again"
        settle_and_check(pacs, [study_uid_of(files[0])])  # delivered once
    finally:
        node.stop()


def test_lease_renewal_keeps_a_call_longer_than_several_leases_single(env: Env, pacs: Storescp) -> None:
    from node.config import load_config
    from node.flow.queue import Queue

    env.emulator.configure(delay_seconds=6.0)  # six lease periods
    node = env.node("renew", pacs, queue={"lease_seconds": 1.0}, endpoint={"timeout_seconds": 60})
    try:
        files = env.study()
        send(node, files)
        wait_until(lambda: len(env.emulator.requests) == 1, 60, "the model call to start")
        (job_id,), = db_rows(node, "SELECT id FROM jobs")
        queue = Queue(load_config(node.config_path))
        leases = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # what the sweep does with an expired lease: run the job again
            queue.enqueue_job(job_id)
            leases.add(db_rows(node, "SELECT lease_until FROM jobs WHERE id = ?", job_id)[0][0])
            time.sleep(0.5)
        assert len(leases - {None}) >= 3, f"the lease was renewed while the call ran: {leases}"
        settle_and_check(pacs, [study_uid_of(files[0])])  # delivered once
        assert len(env.emulator.requests) == 1, "the model was called once"
    finally:
        node.stop()
