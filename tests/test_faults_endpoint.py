"""Faults: the model endpoint misbehaves (the emulator's fault script), the node keeps serving other studies.

One node, one emulator and one Orthanc for the module. Each case scripts a fault, sends study A (which meets
it), then study B while A is still being handled; B's results must reach Orthanc whatever happens to A. A
transient fault (429 with Retry-After, 500, 503, a stall past the read timeout, a closed connection) is
retried and A's results arrive once; a permanent one (malformed JSON, a reply of the wrong shape, 400) fails
A's job with a reason that ``dicom-node status`` shows. Retries exhausted open the endpoint's circuit: the job
waits (with the reason) and runs again when the circuit's probe finds the endpoint back (tests/test_faults_outage.py
has the outage cases).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from support.nodekit import pacs_uids_by_study, send, status_json, study_uid_of, wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.faults, pytest.mark.slow]

READ_TIMEOUT = 2.0  # the endpoint's read timeout in this node's configuration
MAX_ATTEMPTS = 3


class Env:
    def __init__(self, tmp: Path, data: Path, emulator, pacs: Orthanc, node: NodeProcess) -> None:
        self.tmp, self.data, self.emulator, self.pacs, self.node = tmp, data, emulator, pacs, node
        self.n = 0

    def study(self) -> list[Path]:
        self.n += 1
        return derive_cxr_study(self.tmp / f"study{self.n}", self.data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                patient_id=f"EP-{self.n}")

    def job_of(self, study_uid: str) -> dict | None:
        jobs = [j for j in status_json(self.node)["recent_jobs"] if j["study_uid"] == study_uid]
        return jobs[0] if jobs else None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Env]:
    from node.emulator.server import EmulatorServer

    tmp = tmp_path_factory.mktemp("endpoint-faults")
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp / "orthanc") as pacs:
        cfg = node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port), quiet=0.5)
        cfg["endpoints"]["cxr"].update(timeout_seconds=READ_TIMEOUT, max_attempts=MAX_ATTEMPTS,
                                       backoff_initial_seconds=0.2, backoff_max_seconds=0.5,
                                       retry_initial_seconds=1, retry_max_seconds=2)
        node = NodeProcess(tmp, cfg)
        node.start()
        try:
            yield Env(tmp, data, emulator, pacs, node)
        finally:
            node.stop()
            print("\n" + node.status())


CASES = {
    # name: (fault script, expected state of A's job, words its outcome must contain)
    "429_retry_after": ([{"status": 429, "retry_after": 1}], "done", ""),
    "500": ([{"status": 500}], "done", ""),
    "503_twice": ([{"status": 503, "repeat": 2}], "done", ""),
    "stall_past_timeout": ([{"stall_seconds": READ_TIMEOUT + 3}], "done", ""),
    "connection_closed": ([{"close": True}], "done", ""),
    "malformed_json": ([{"malformed": True}], "failed", "not valid JSON"),
    "box_of_wrong_shape": ([{"body": [{"output": '[["EMULATED finding", [[0.1, 0.2, 0.3]]]]'}]}], "failed",
                           "must be 4 numbers"),
    "not_a_list": ([{"body": {"result": "EMULATED"}}], "failed", "without 'output'"),
    "400_bad_request": ([{"status": 400}], "failed", "HTTP 400"),
    "503_every_time": ([{"status": 503, "repeat": MAX_ATTEMPTS}], "retried", "will be retried"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_endpoint_fault(env: Env, case: str) -> None:
    faults, want_state, want_words = CASES[case]
    a, b = env.study(), env.study()
    a_uid, b_uid = study_uid_of(a[0]), study_uid_of(b[0])
    n_requests = len(env.emulator.requests)
    env.emulator.script_faults(faults)
    send(env.node, a)
    # A's first call consumed the fault (or is stalling on it): now another study arrives
    wait_until(lambda: any(r.get("fault") for r in env.emulator.requests[n_requests:]), 30,
               "study A's call to meet the fault")
    send(env.node, b)
    wait_until(lambda: pacs_uids_by_study(env.pacs).get(b_uid) == 2, 60, "study B's SR and GSPS in Orthanc")

    if want_state in ("done", "retried"):
        wait_until(lambda: pacs_uids_by_study(env.pacs).get(a_uid) == 2, 60, "study A's results after retries")
        job = env.job_of(a_uid)
        # "done": retried inside one job attempt; "retried": the job's attempt failed, the job ran once more
        assert job["state"] == "done" and job["attempts"] == (1 if want_state == "done" else 2), job
        assert want_words in env.node.logs()
    else:
        job = wait_until(lambda: (j := env.job_of(a_uid)) and j["state"] == want_state and j, 60,
                         f"study A's job to be {want_state}")
        assert want_words in (job["outcome"] or ""), job
        assert want_words in env.node.status(), "the reason must be visible in dicom-node status"
        assert pacs_uids_by_study(env.pacs).get(a_uid) is None, "no result for a failed call"
    time.sleep(0.5)
    counts = pacs_uids_by_study(env.pacs)
    assert counts.get(b_uid) == 2 and counts.get(a_uid) in (None, 2), counts
    assert env.emulator.pending_faults == [], "every scripted fault was met"
