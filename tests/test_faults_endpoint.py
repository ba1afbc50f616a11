"""Faults: the model endpoint misbehaves (the emulator's fault script), the node keeps serving other studies.

One node, one emulator and one Orthanc for the module. Each case scripts a fault, sends study A (which meets
it), then study B while A is still failing: the last fault A meets is held for ``HOLD`` seconds (a stall before
the fault's answer; the stall case holds by itself), and B's results must reach Orthanc before A's failing call
ends (or, for the faults that are retried, before A's successful call starts), counted from the emulator's request
log (each call's ``x-ms-client-request-id`` names its job) and Orthanc's log of the C-STOREs it received. A
transient fault (429 with Retry-After, 500, 503, a stall past the read timeout, a closed connection) is retried
and A's results arrive once (one SR and one GSPS, each C-STOREd once); a permanent one (malformed JSON, a reply of
the wrong shape, 400) fails A's job with a reason that ``dicom-node status`` shows and nothing of A is sent.
Retries exhausted open the endpoint's circuit: the job waits (with the reason) and runs again when the circuit's
probe finds the endpoint back (tests/test_faults_outage.py has the outage cases).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from support.nodekit import db_rows, send, status_json, study_uid_of, wait_until
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.faults, pytest.mark.slow]

READ_TIMEOUT = 12.0  # the endpoint's read timeout in this node's configuration
HOLD = 10.0  # seconds the last fault A meets takes to come (below the read timeout): B is served meanwhile
MAX_ATTEMPTS = 3
RESULT_KINDS = ("SR", "PR")


def job_of_call(entry: dict) -> str | None:
    """The job UID prefix a call names in its ``x-ms-client-request-id`` (``dn-<job_uid[:24]>-<attempt>``)."""
    parts = (entry["headers"].get("x-ms-client-request-id") or "").split("-")
    return parts[1] if len(parts) == 3 and parts[0] == "dn" else None


class Env:
    def __init__(self, tmp: Path, data: Path, emulator, pacs: Orthanc, node: NodeProcess) -> None:
        self.tmp, self.data, self.emulator, self.pacs, self.node = tmp, data, emulator, pacs, node
        self.n = 0

    def study(self, frontal: str = "cr_pa_jpeg_baseline.dcm") -> list[Path]:
        self.n += 1
        return derive_cxr_study(self.tmp / f"study{self.n}", self.data / "cxr" / frontal, None,
                                patient_id=f"EP-{self.n}")

    def job_of(self, study_uid: str) -> dict | None:
        jobs = [j for j in status_json(self.node)["recent_jobs"] if j["study_uid"] == study_uid]
        return jobs[0] if jobs else None

    def calls_of(self, study_uid: str, since: int) -> list[dict]:
        """The emulator's log entries (from the ``since``-th) of the calls made for the study's jobs."""
        jobs = {uid[:24] for (uid,) in db_rows(self.node, "SELECT job_uid FROM jobs WHERE study_uid = ?",
                                               study_uid)}
        return [r for r in self.emulator.requests[since:] if job_of_call(r) in jobs]

    def cstores_of(self, study_uid: str) -> list[tuple[str, str]]:
        """(modality, SOP Instance UID) of every C-STORE Orthanc received for the study, duplicates included."""
        return sorted((r.modality, r.sop) for r in self.pacs.received_log()
                      if r.study == study_uid and r.origin == "DicomProtocol")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Env]:
    from node.emulator.server import EmulatorServer

    tmp = tmp_path_factory.mktemp("endpoint-faults")
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp / "orthanc", count_cstores=True) as pacs:
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


def held(faults: list[dict]) -> list[dict]:
    """The case's fault script, ``repeat`` expanded, its last fault answered only after ``HOLD`` seconds."""
    out = [dict(f, repeat=1) for f in faults for _ in range(f.get("repeat", 1))]
    out = [{k: v for k, v in f.items() if k != "repeat"} for f in out]
    out[-1].setdefault("stall_seconds", HOLD)
    return out


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


def assert_once(cstores: list[tuple[str, str]], study: str) -> None:
    """One SR and one GSPS, each C-STOREd once."""
    assert sorted(kind for kind, _ in cstores) == sorted(RESULT_KINDS), (study, cstores)
    assert len({sop for _, sop in cstores}) == len(cstores), (study, cstores)


@pytest.mark.parametrize("case", list(CASES))
def test_endpoint_fault(env: Env, case: str) -> None:
    faults, want_state, want_words = CASES[case]
    script = held(faults)
    # B's frontal differs from A's, so the model's answers differ too
    a, b = env.study(), env.study("cr_pa_mono1_uncompressed.dcm")
    a_uid, b_uid = study_uid_of(a[0]), study_uid_of(b[0])
    n_requests = len(env.emulator.requests)
    env.emulator.script_faults(script)
    send(env.node, a)
    # A met every fault of the script and the last one (held) is in progress: now another study arrives
    wait_until(lambda: not env.emulator.pending_faults and (calls := env.calls_of(a_uid, n_requests))
               and calls[-1]["fault"] and calls[-1]["state"] == "in_progress", 60, "study A to meet the held fault")
    send(env.node, b)
    wait_until(lambda: len(env.cstores_of(b_uid)) >= len(RESULT_KINDS), 60, "study B's SR and GSPS in Orthanc")
    b_delivered = time.time()

    if want_state in ("done", "retried"):
        wait_until(lambda: len(env.cstores_of(a_uid)) >= len(RESULT_KINDS), 60, "study A's results after retries")
        job = env.job_of(a_uid)
        # "done": retried inside one job attempt; "retried": the job's attempt failed, the job ran once more
        assert job["state"] == "done" and job["attempts"] == (1 if want_state == "done" else 2), job
        assert want_words in env.node.logs()
        calls = env.calls_of(a_uid, n_requests)
        served = [c for c in calls if c["status"] == 200 and not c["fault"]]
        assert len(served) == 1 and len(calls) == len(script) + 1, calls
        # B was served while A was failing: A's successful call began after B's results were at the PACS
        assert served[0]["time"] > b_delivered, (served[0]["time"], b_delivered)
    else:
        job = wait_until(lambda: (j := env.job_of(a_uid)) and j["state"] == want_state and j, 60,
                         f"study A's job to be {want_state}")
        assert want_words in (job["outcome"] or ""), job
        assert want_words in env.node.status(), "the reason must be visible in dicom-node status"
        calls = env.calls_of(a_uid, n_requests)
        assert len(calls) == 1 and calls[0]["fault"], calls
        # B was served while A was failing: A's failing call was still held when B's results were at the PACS
        assert calls[0]["time"] + calls[0]["elapsed_ms"] / 1000 > b_delivered, (calls[0], b_delivered)
    time.sleep(1.0)  # a late second send would arrive now
    assert_once(env.cstores_of(b_uid), b_uid)
    if want_state == "failed":
        assert env.cstores_of(a_uid) == [], "no result for a failed call"
    else:
        assert_once(env.cstores_of(a_uid), a_uid)
    assert env.emulator.pending_faults == [], "every scripted fault was met"
