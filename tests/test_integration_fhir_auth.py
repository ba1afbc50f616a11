"""FHIR destinations with ``auth: basic`` and ``auth: bearer`` against the test EHR requiring those credentials
(tests/support/fhir_receiver.py), through the real outbox (``deliver_due``): the right credentials deliver one
report (counted in the EHR's store, the header checked as the EHR received it); wrong ones get 401 and are retried
``max_processing_failure_attempts`` times, then parked with the server's words, as docs/hospital-it.md
says; a secret fixed in the environment between two tries is used by the next one (read at every request); a
secret variable that is empty parks at once, naming the variable.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from node.config import parse_config
from node.flow.deliver import deliver_due
from node.reports.job import build_report
from node.reports.read import read_results
from node.store.state import Store
from support import reports
from support.fhir_receiver import FhirReceiver

pytestmark = [pytest.mark.security, pytest.mark.engine]
OWNER = "t:1:a"
USER, PASSWORD, TOKEN = "ai-node", "s3cret-Pa55", "eyJ.test-token.sig"


def outbox_for(tmp: Path, data: Path, dest: dict[str, Any]) -> tuple[Store, Any, str]:
    """One report of a chest X-ray study waiting in the outbox for the ``ehr`` destination."""
    cfg = parse_config({
        "node": {"storage_dir": str(tmp / "var")},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
        "destinations": {"ehr": {"type": "fhir", "timeout_seconds": 10, "backoff_initial_seconds": 0,
                                 "backoff_max_seconds": 0, "max_processing_failure_attempts": 3, **dest}},
        "rules": [{"name": "chest", "endpoint": "cxr", "send_to": ["ehr"]}]})
    store = Store.open(cfg.database_url)
    made = reports.cxr_report(data)
    study = str(made.source.StudyInstanceUID)
    (jid,) = store.create_jobs(study, 1, [("chest", "cxr", ["1.2.3"])])
    job = store.claim_job(jid, OWNER, 60)
    report = build_report(job=job, content=read_results(made.results, made.source), previous=None)
    path = tmp / f"{report.uid}.json"
    path.write_bytes(report.to_json())
    assert store.finish_job(jid, OWNER, state="done", outcome="ok", destinations=["ehr"], new_results=[
        {"sop_instance_uid": report.uid, "study_uid": study, "series_uid": "", "sop_class_uid": "", "kind": "report",
         "path": str(path)}])
    return store, cfg, report.uid


def row(store: Store) -> dict[str, Any]:
    with store.engine.connect() as conn:
        (r,) = conn.exec_driver_sql("SELECT state, attempts, last_status, error FROM outbox").mappings().all()
    return dict(r)


@pytest.mark.parametrize("kind", ["basic", "bearer"])
def test_the_right_credentials_deliver_and_a_rotated_secret_is_used_at_the_next_try(
        tmp_path: Path, data: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = {"basic": {"basic": (USER, PASSWORD)}, "bearer": {"bearer": TOKEN}}[kind]
    dest = {"basic": {"auth": "basic", "user": USER, "password_env": "EHR_TEST_SECRET"},
            "bearer": {"auth": "bearer", "token_env": "EHR_TEST_SECRET"}}[kind]
    right = PASSWORD if kind == "basic" else TOKEN
    monkeypatch.setenv("EHR_TEST_SECRET", "last-month's-secret")
    with FhirReceiver(**creds) as ehr:
        store, cfg, _ = outbox_for(tmp_path, data, {"url": ehr.url, **dest})
        first = deliver_due(store, cfg, "ehr", OWNER)
        assert (first.delivered, first.retrying, first.parked) == (0, 1, 0)
        assert row(store)["last_status"] == "http-401" and row(store)["state"] == "pending"
        monkeypatch.setenv("EHR_TEST_SECRET", right)  # the secret rotated in the environment
        assert deliver_due(store, cfg, "ehr", OWNER).delivered == 1
        assert row(store)["state"] == "delivered" and row(store)["attempts"] == 2
        assert len(ehr.refused) == 1 and len(ehr.posts) == 1, "one refused, one taken"
        assert len(ehr.resources("DiagnosticReport")) == 1 and ehr.invalid == []
        sent = ehr.posts[0]["headers"]["Authorization"]
    if kind == "basic":
        assert sent == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    else:
        assert sent == f"Bearer {TOKEN}"


@pytest.mark.parametrize("kind", ["basic", "bearer"])
def test_wrong_credentials_are_retried_then_parked_with_the_servers_words(
        tmp_path: Path, data: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = {"basic": {"basic": (USER, PASSWORD)}, "bearer": {"bearer": TOKEN}}[kind]
    dest = {"basic": {"auth": "basic", "user": "someone-else", "password_env": "EHR_TEST_SECRET"},
            "bearer": {"auth": "bearer", "token_env": "EHR_TEST_SECRET"}}[kind]
    monkeypatch.setenv("EHR_TEST_SECRET", PASSWORD if kind == "basic" else "not-the-token")
    with FhirReceiver(**creds) as ehr:
        store, cfg, _ = outbox_for(tmp_path, data, {"url": ehr.url, **dest})
        outcomes = [deliver_due(store, cfg, "ehr", OWNER) for _ in range(4)]
        assert [(o.retrying, o.parked) for o in outcomes] == [(1, 0), (1, 0), (0, 1), (0, 0)]
        parked = row(store)
        assert parked["state"] == "parked" and parked["attempts"] == 3 and parked["last_status"] == "http-401"
        assert "missing or wrong credentials" in parked["error"] and "gave up after 3 attempts" in parked["error"]
        assert len(ehr.refused) == 3 and ehr.posts == [] and ehr.resources("DiagnosticReport") == []
        assert PASSWORD not in parked["error"] and "not-the-token" not in parked["error"]


def test_an_empty_secret_variable_parks_at_once_naming_it(tmp_path: Path, data: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHR_TEST_SECRET", raising=False)
    with FhirReceiver(bearer=TOKEN) as ehr:
        store, cfg, _ = outbox_for(tmp_path, data, {"url": ehr.url, "auth": "bearer", "token_env": "EHR_TEST_SECRET"})
        assert deliver_due(store, cfg, "ehr", OWNER).parked == 1
        parked = row(store)
        assert parked["state"] == "parked" and parked["attempts"] == 1 and "EHR_TEST_SECRET" in parked["error"]
        assert ehr.refused == [] and ehr.posts == [], "nothing was sent"
