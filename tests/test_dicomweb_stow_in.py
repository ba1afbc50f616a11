"""STOW-RS in: POST /dicomweb/studies stores each instance as durably as a C-STORE and answers per instance."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from node.config import parse_config
from node.dicomweb import multipart
from node.dicomweb.stow_in import stow_routes
from node.flow.intake import Intake
from node.store.spool import Spool
from node.store.state import Store
from support.studies import derive_cxr_study

TOKEN = "s3cret-token"


def app_for(tmp_path: Path, queue=None, cfg=None, **kw):
    cfg = cfg or parse_config({"node": {"storage_dir": str(tmp_path / "var"), "min_free_disk_mb": 0}})
    store = Store.open(cfg.database_url)
    spool = Spool(cfg.storage_dir)
    spool.create()
    intake = Intake(cfg, store, queue)
    routes = stow_routes(cfg, store, spool, intake,
                         authorize=lambda r: r.headers.get("authorization") == f"Bearer {TOKEN}", **kw)
    return Starlette(routes=routes), store, spool


def post(client: TestClient, parts: list[bytes], path: str = "/dicomweb/studies", token: str = TOKEN, **headers):
    body, content_type = multipart.encode(parts)
    return client.post(path, content=body, headers={"Content-Type": content_type,
                                                     "Authorization": f"Bearer {token}", **headers})


def uids(rsp, seq: str) -> dict[str, int | None]:
    items = (rsp.json().get(seq) or {}).get("Value", [])
    return {i.get("00081155", {}).get("Value", [""])[0]: (i.get("00081197") or {}).get("Value", [None])[0]
            for i in items}


def test_each_instance_is_stored_durably_and_listed(tmp_path: Path, data: Path) -> None:
    study = derive_cxr_study(tmp_path / "s", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    app, store, _ = app_for(tmp_path)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study]
    with TestClient(app) as client:
        rsp = post(client, [f.read_bytes() for f in study])
    assert rsp.status_code == 200 and rsp.headers["content-type"].startswith("application/dicom+json")
    assert set(uids(rsp, "00081199")) == set(sops)
    for f, sop in zip(study, sops):
        held = store.instance(sop)
        assert held is not None and held["calling_ae"] == "STOW-RS"
        assert Path(held["path"]).read_bytes() == f.read_bytes(), "stored byte for byte"
    study_row = store.study(str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID))
    assert study_row["state"] == "receiving" and study_row["check_due_at"], "the quiet timer runs as for C-STORE"


def test_partial_failure_quarantines_the_bad_part_and_keeps_the_good_one(tmp_path: Path, data: Path) -> None:
    (good,) = derive_cxr_study(tmp_path / "s", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    no_uid = pydicom.dcmread(good)
    del no_uid.SeriesInstanceUID
    no_uid.SOPInstanceUID = "1.2.3.4.5.6"
    bad_path = tmp_path / "bad.dcm"
    no_uid.save_as(bad_path, enforce_file_format=True)
    app, store, _ = app_for(tmp_path)
    with TestClient(app) as client:
        rsp = post(client, [good.read_bytes(), b"this is not DICOM", bad_path.read_bytes()])
        assert rsp.status_code == 202
        assert list(uids(rsp, "00081199")) == [str(pydicom.dcmread(good).SOPInstanceUID)]
        failed = rsp.json()["00081198"]["Value"]
        assert [i["00081197"]["Value"][0] for i in failed] == [0xC000, 0xC000]
        assert store.summary()["quarantined"] == 2, "both refused parts kept aside with their reason"
        other = str(pydicom.dcmread(good, stop_before_pixels=True).StudyInstanceUID) + ".9"
        mismatch = post(client, [good.read_bytes()], path=f"/dicomweb/studies/{other}")
        assert mismatch.status_code == 409
        assert list(uids(mismatch, "00081198").values()) == [0xA900]


def test_token_media_type_and_size_are_checked(tmp_path: Path, data: Path) -> None:
    (good,) = derive_cxr_study(tmp_path / "s", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    app, store, _ = app_for(tmp_path, max_request_bytes=good.stat().st_size + 100_000)
    with TestClient(app) as client:
        assert post(client, [good.read_bytes()], token="wrong").status_code == 401
        assert client.post("/dicomweb/studies", content=good.read_bytes(),
                           headers={"Content-Type": "application/dicom",
                                    "Authorization": f"Bearer {TOKEN}"}).status_code == 415
        assert post(client, [good.read_bytes()] * 2).status_code == 413
        sop = str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)
        assert store.instance(sop) is None, "nothing kept from refused requests"
        assert post(client, [good.read_bytes()]).status_code == 200


@pytest.mark.slow
def test_a_study_stowed_into_the_node_reaches_a_dimse_destination(tmp_path: Path, data: Path, monkeypatch) -> None:
    """STOW-RS to ``dicom-node serve``'s own HTTP side -> quiet timer -> rules -> emulator -> SR and GSPS by
    C-STORE to a real Orthanc; without the token the same request is refused and nothing is kept."""
    import httpx

    from node.emulator.server import EmulatorServer
    from support.nodekit import db_rows
    from support.nodeproc import NodeProcess, node_config
    from support.orthanc import Orthanc
    from support.ports import free_port

    study = derive_cxr_study(tmp_path / "s", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    monkeypatch.setenv("NODE_HTTP_TOKEN", TOKEN)
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}/dicomweb/studies"
    body, content_type = multipart.encode(f.read_bytes() for f in study)
    with EmulatorServer("127.0.0.1", 0) as model, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=model.url, pacs=(pacs.aet, pacs.dicom_port),
                                                 http={"host": "127.0.0.1", "port": http_port,
                                                       "token_env": "NODE_HTTP_TOKEN"}))
        node.start()
        try:
            deadline = time.monotonic() + 60
            while True:  # the HTTP side is its own process: wait until it answers
                try:
                    if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2, trust_env=False).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, node.logs()
                time.sleep(0.2)
            refused = httpx.post(url, content=body, timeout=60, trust_env=False,
                                 headers={"Content-Type": content_type})
            assert refused.status_code == 401
            assert db_rows(node, "SELECT COUNT(*) FROM instances") == [(0,)]
            rsp = httpx.post(url, content=body, timeout=60, trust_env=False,
                             headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
            assert rsp.status_code == 200, rsp.text
            got = pacs.wait_for_instances(2, timeout=120)
            time.sleep(2)  # a second send would arrive now
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
        finally:
            node.stop()
        assert sorted(cstores.values()) == [1, 1], cstores
        assert sorted(ds.Modality for ds in got) == ["PR", "SR"], node.logs()
        assert {str(ds.StudyInstanceUID) for ds in got} == {str(pydicom.dcmread(study[0]).StudyInstanceUID)}
        assert sorted(db_rows(node, "SELECT state, attempts FROM outbox")) == [("delivered", 1)] * 2
