"""Return by STOW-RS: the outbox against the emulated Azure DICOM service and a real Orthanc (DICOMweb plugin).

Counts are taken at the peer: the emulator counts each SOP Instance UID that arrives in a STOW-RS request.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pydicom
import pytest

from node.config import parse_config
from node.dicomweb import multipart
from node.dicomweb.stow import read_response
from node.emulator.azure_dicom import AzureDicomEmulator
from node.flow.deliver import deliver_due, sender_for
from node.store.state import Store
from support.orthanc import Orthanc


def make_outbox(tmp_path: Path, data: Path, url: str, n: int = 2, *, broken: int | None = None,
                **dest) -> tuple[Store, object, list[str]]:
    """An outbox of ``n`` results for a ``type: dicomweb`` destination; result ``broken`` lacks its PatientID."""
    tmp_path.mkdir(parents=True, exist_ok=True)  # the results below go here (on PostgreSQL no node.db makes it)
    cfg = parse_config({
        "node": {"storage_dir": str(tmp_path / "var")},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
        "destinations": {"archive": {"type": "dicomweb", "url": url, "backoff_initial_seconds": 0,
                                     "backoff_max_seconds": 0, "timeout_seconds": 30, **dest}},
        "rules": [{"name": "r", "endpoint": "cxr", "send_to": ["archive"]}],
    })
    store = Store.open(cfg.database_url)
    owner = "test:1:x"
    jid = store.create_jobs("1.2.3", 1, [("r", "cxr", ["1.2.3.4"])])[0]
    assert store.claim_job(jid, owner, 60) is not None
    uids, rows = [], []
    for i in range(n):
        src = pydicom.dcmread(data / "compressed" / "CT1_UNC.dcm")
        src.StudyInstanceUID = "1.2.3"
        src.SeriesInstanceUID = "1.2.3.9"
        src.SOPInstanceUID = f"1.2.3.9.{i + 1}"
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        if i == broken:
            del src.PatientID
        path = tmp_path / f"r{i}.dcm"
        src.save_as(path, enforce_file_format=True)
        uids.append(src.SOPInstanceUID)
        rows.append({"sop_instance_uid": src.SOPInstanceUID, "study_uid": "1.2.3", "series_uid": "1.2.3.9",
                     "sop_class_uid": str(src.SOPClassUID), "kind": "sr", "path": str(path)})
    assert store.finish_job(jid, owner, state="done", outcome="ok", new_results=rows, destinations=["archive"])
    return store, cfg, uids


def rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.exec_driver_sql("SELECT * FROM outbox ORDER BY id").mappings()]


def test_config_needs_a_url_for_dicomweb_and_an_address_for_dimse() -> None:
    from node.config import ConfigError

    base = {"endpoints": {}, "rules": []}
    with pytest.raises(ConfigError, match="url"):
        parse_config({**base, "destinations": {"a": {"type": "dicomweb"}}})
    with pytest.raises(ConfigError, match="ae_title, host and port"):
        parse_config({**base, "destinations": {"a": {"host": "x"}}})
    with pytest.raises(ConfigError, match="token_env"):
        parse_config({**base, "destinations": {"a": {"type": "dicomweb", "url": "https://x/v2", "auth": "bearer"}}})
    cfg = parse_config({**base, "destinations": {"a": {"type": "dicomweb", "url": "https://x/v2", "auth": "entra"}}})
    assert cfg.destinations["a"].scope is None  # the Azure DICOM service's scope is the default (auth.py)


def test_response_is_read_per_instance() -> None:
    """PS3.18 10.5.3 answers: stored, warned, failed by reason; 45070 (Azure: already stored) counts as delivered."""
    body = {
        "00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.1"]}},
            {"00081155": {"vr": "UI", "Value": ["1.2"]}, "00081196": {"vr": "US", "Value": [45063]}}]},
        "00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["1.3"]}, "00081197": {"vr": "US", "Value": [45070]}},
            {"00081155": {"vr": "UI", "Value": ["1.4"]}, "00081197": {"vr": "US", "Value": [43264]}},
            {"00081155": {"vr": "UI", "Value": ["1.5"]}, "00081197": {"vr": "US", "Value": [45071]}},
            {"00081155": {"vr": "UI", "Value": ["1.6"]}, "00081197": {"vr": "US", "Value": [272]}}]},
    }
    out = read_response(202, body, ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7"])
    assert {uid: o.verdict for uid, o in out.items()} == {
        "1.1": "delivered", "1.2": "delivered", "1.3": "delivered", "1.4": "park", "1.5": "retry",
        "1.6": "retry_limited", "1.7": "retry_limited"}
    assert "warning-0xB007" in out["1.2"].status  # 45063 = 0xB007
    assert read_response(200, None, ["1.8"])["1.8"].verdict == "delivered"


def test_multipart_round_trip() -> None:
    parts = [b"DICM-one\r\n--not-a-boundary", b"\x00\x01two"]
    body, content_type = multipart.encode(parts)
    assert [data for _, data in multipart.decode(body, content_type)] == parts


def test_stow_to_the_azure_emulator_delivers_once_and_a_resend_is_already_stored(tmp_path: Path, data: Path) -> None:
    with AzureDicomEmulator(tmp_path / "azure") as azure:
        store, cfg, uids = make_outbox(tmp_path, data, azure.url)
        assert sender_for(cfg.destinations["archive"]).__name__ == "send_stow"
        report = deliver_due(store, cfg, "archive", "w:1:a")
        assert report.delivered == 2
        assert {u: azure.archive.stow_counts[u] for u in uids} == {u: 1 for u in uids}
        assert deliver_due(store, cfg, "archive", "w:1:a").delivered == 0  # nothing left: never sent twice
        # A resend after a lost answer (the lease expired, say): the service answers 409 / 45070 -> delivered.
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE outbox SET state='pending', next_attempt_at=0")
        again = deliver_due(store, cfg, "archive", "w:1:a")
        assert again.delivered == 2
        assert all(r["last_status"] == "stow-0xB00E" for r in rows(store)), rows(store)


def test_partial_success_delivers_the_good_instance_and_parks_the_invalid_one(tmp_path: Path, data: Path) -> None:
    with AzureDicomEmulator(tmp_path / "azure") as azure:
        store, cfg, uids = make_outbox(tmp_path, data, azure.url, broken=1)
        report = deliver_due(store, cfg, "archive", "w:1:a")
        assert (report.delivered, report.parked) == (1, 1)
        good, bad = rows(store)
        assert good["state"] == "delivered" and good["last_status"] == "http-202"
        assert bad["state"] == "parked" and bad["last_status"] == "stow-0xA900"  # 43264: validation failed
        assert list(azure.archive.instances) == [uids[0]]


def test_unavailable_service_is_retried_then_delivered(tmp_path: Path, data: Path) -> None:
    with AzureDicomEmulator(tmp_path / "azure") as azure:
        store, cfg, uids = make_outbox(tmp_path, data, azure.url, instances_per_request=1)
        azure.script_faults(503, 1)  # the first request only; the second instance goes through
        report = deliver_due(store, cfg, "archive", "w:1:a")
        assert (report.delivered, report.retrying) == (1, 1)
        assert rows(store)[0]["last_status"] == "http-503"
        assert deliver_due(store, cfg, "archive", "w:1:a").delivered == 1
        assert {u: azure.archive.stow_counts[u] for u in uids} == {u: 1 for u in uids}


def test_refused_credentials_and_missing_service_park(tmp_path: Path, data: Path, monkeypatch) -> None:
    monkeypatch.setenv("DW_TOKEN", "wrong")
    with AzureDicomEmulator(tmp_path / "azure", token="right") as azure:
        store, cfg, _ = make_outbox(tmp_path, data, azure.url, n=1, auth="bearer", token_env="DW_TOKEN",
                                    max_processing_failure_attempts=1)
        assert deliver_due(store, cfg, "archive", "w:1:a").parked == 1
        assert rows(store)[0]["last_status"] == "http-401"
        monkeypatch.setenv("DW_TOKEN", "right")
        assert store.retry_parked() == 1
        assert deliver_due(store, cfg, "archive", "w:1:a").delivered == 1
    store, cfg, _ = make_outbox(tmp_path / "x", data, "http://127.0.0.1:1/v2", n=1)
    assert deliver_due(store, cfg, "archive", "w:1:a").retrying == 1  # nothing listening: a network error


@pytest.mark.slow
def test_stow_to_orthanc_dicomweb_read_back_by_qido_and_wado(tmp_path: Path, data: Path) -> None:
    from support.validate import assert_valid_dicom

    with Orthanc(tmp_path / "orthanc", dicomweb=True) as pacs:
        store, cfg, uids = make_outbox(tmp_path, data, pacs.dicomweb_url, n=3, instances_per_request=2)
        t0 = time.monotonic()
        assert deliver_due(store, cfg, "archive", "w:1:a").delivered == 3
        print(f"\nSTOW-RS to Orthanc: 3 instances in {time.monotonic() - t0:.2f} s")
        http = httpx.Client(timeout=30, trust_env=False)
        found = http.get(f"{pacs.dicomweb_url}/studies/1.2.3/instances", headers={"Accept": "application/dicom+json"})
        assert found.status_code == 200
        assert sorted(i["00080018"]["Value"][0] for i in found.json()) == sorted(uids)
        got = http.get(f"{pacs.dicomweb_url}/studies/1.2.3/series/1.2.3.9/instances/{uids[0]}",
                       headers={"Accept": 'multipart/related; type="application/dicom"'})
        (kind, body), = multipart.decode(got.content, got.headers["Content-Type"])
        path = tmp_path / "back.dcm"
        path.write_bytes(body)
        assert pydicom.dcmread(path).SOPInstanceUID == uids[0]
        assert_valid_dicom(path)


@pytest.mark.slow
def test_a_study_gets_its_results_back_by_stow_rs_to_orthanc(tmp_path: Path, data: Path) -> None:
    """storescu -> dicom-node serve -> emulator -> SR and GSPS by STOW-RS to Orthanc's DICOMweb; read back by
    QIDO-RS and WADO-RS and checked with dciodvfy."""
    from node.emulator.server import EmulatorServer
    from support.nodekit import send, wait_until
    from support.nodeproc import NodeProcess, node_config
    from support.studies import derive_cxr_study
    from support.validate import assert_valid_dicom

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    with EmulatorServer("127.0.0.1", 0) as model, \
            Orthanc(tmp_path / "orthanc", dicomweb=True, count_cstores=True) as pacs:
        cfg = node_config(tmp_path, endpoint_url=model.url, pacs=None)
        cfg["destinations"]["archive"] = {"type": "dicomweb", "url": pacs.dicomweb_url,
                                          "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2}
        cfg["rules"][0]["send_to"] = ["archive"]
        node = NodeProcess(tmp_path, cfg)
        node.start()
        http = httpx.Client(timeout=30, trust_env=False)

        def results() -> list[dict]:
            rsp = http.get(f"{pacs.dicomweb_url}/studies/{study_uid}/instances",
                           params={"includefield": "00080060"}, headers={"Accept": "application/dicom+json"})
            return rsp.json() if rsp.status_code == 200 else []

        try:
            send(node, study)  # the study goes to the node only; Orthanc receives nothing but the results
            found = wait_until(lambda: len(results()) >= 2 and results(), 120, "SR and GSPS in Orthanc")
            time.sleep(2)  # a second send would arrive now
            received = pacs.received_log()  # every instance Orthanc received, by its Lua filter
        finally:
            node.stop()
        assert sorted(i["00080060"]["Value"][0] for i in found) == ["PR", "SR"], node.logs()
        assert len(results()) == 2
        for item in found:
            series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
            got = http.get(f"{pacs.dicomweb_url}/studies/{study_uid}/series/{series}/instances/{sop}",
                           headers={"Accept": 'multipart/related; type="application/dicom"'})
            (_, body), = multipart.decode(got.content, got.headers["Content-Type"])
            path = tmp_path / f"{sop}.dcm"
            path.write_bytes(body)
            assert_valid_dicom(path)
        # Orthanc keeps one copy of a UID and ignores a second STOW of it, so each instance it received is counted
        # by its Lua filter: each result arrived once, by STOW-RS (the DICOMweb plugin), and nothing else arrived.
        sops = sorted(item["00080018"]["Value"][0] for item in found)
        assert sorted((r.sop, r.origin) for r in received) == [(sop, "Plugins") for sop in sops], received


def test_entra_asks_for_the_azure_dicom_scope_by_default(tmp_path: Path, data: Path) -> None:
    """auth: entra -> a token for https://dicom.healthcareapis.azure.com/.default, sent as a bearer token."""
    from types import SimpleNamespace

    from node.dicomweb.auth import authenticator

    class Credential:
        scopes: list[str] = []

        def get_token(self, scope: str):
            self.scopes.append(scope)
            return SimpleNamespace(token="entra-token", expires_on=time.time() + 3600)

    cred = Credential()
    with AzureDicomEmulator(tmp_path / "azure", token="entra-token") as azure:
        cfg = parse_config({"destinations": {"a": {"type": "dicomweb", "url": azure.url, "auth": "entra"}}})
        assert authenticator(cfg.destinations["a"], cred).headers() == {"Authorization": "Bearer entra-token"}
        assert cred.scopes == ["https://dicom.healthcareapis.azure.com/.default"]
        other = parse_config({"destinations": {"a": {"type": "dicomweb", "url": azure.url, "auth": "entra",
                                                     "scope": "api://my-dicom/.default"}}})
        authenticator(other.destinations["a"], cred).headers()
        assert cred.scopes[-1] == "api://my-dicom/.default"
