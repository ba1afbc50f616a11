"""The HTTP side's app in process (Starlette's test client) and the JSON log format: no node, no peers."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy import text as sql
from starlette.testclient import TestClient

from node.config import parse_config
from node.http.app import build_app
from node.http.context import worker_pidfile
from node.ops.jsonlog import JsonFormatter, uids_in
from node.ops.logsafety import RedactSecrets
from node.store.schema import jobs, outbox, results
from node.store.spool import Spool
from node.store.state import Store

TOKEN = "unit-test-token-abcdef"


@pytest.fixture()
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var"), "min_free_disk_mb": 0},
                        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
                        "http": {"port": 18099, "token_env": "HTTP_APP_TEST_TOKEN"}}, tmp_path / "n.yaml", tmp_path)
    Spool(cfg.storage_dir).create()
    store = Store.open(cfg.database_url)
    t = time.time()
    with store.engine.begin() as conn:
        conn.execute(insert(jobs).values(id=1, job_uid="2.25.1", study_uid="1.2.3.4", study_version=1, rule_name="r",
                                         endpoint="cxr", series_uids="[]", state="done", attempts=1,
                                         next_attempt_at=t, created_at=t, updated_at=t))
        conn.execute(insert(results).values(sop_instance_uid="1.2.3.4.5", job_id=1, study_uid="1.2.3.4",
                                            series_uid="1.2.3.4.6", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                                            kind="sr", path=str(tmp_path / "none.dcm"), created_at=t))
        conn.execute(insert(outbox).values(result_uid="1.2.3.4.5", destination="pacs", state="parked", attempts=20,
                                           next_attempt_at=t, last_status="0xA700", error="gave up", created_at=t))
    monkeypatch.delenv("HTTP_APP_TEST_TOKEN", raising=False)
    return cfg, store


def test_health_metrics_and_pages(app_env) -> None:
    cfg, store = app_env
    client = TestClient(build_app(cfg))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["worker"]["ok"] is False
    assert ready.json()["checks"]["database"]["ok"] and ready.json()["checks"]["spool"]["ok"]
    worker_pidfile(cfg.storage_dir).write_text(str(os.getpid()))  # a live process stands in for the worker
    assert client.get("/readyz").status_code == 200
    text = client.get("/metrics").text
    assert 'dicom_node_parked_results{destination="pacs"} 1.0' in text
    assert 'dicom_node_outbox_depth{destination="pacs"} 0.0' in text
    page = client.get("/outbox").text
    assert "1.2.3.4.5" in page and "gave up" in page and "Parked (not delivered) (1)" in page
    assert client.get("/studies/9.9.9").status_code == 404
    # A newer node upgrades the database past a revision this version does not know: not ready, and why.
    client.app.state.ctx.store.schema_guard.interval = 0.0
    with store.engine.begin() as conn:
        conn.execute(sql("UPDATE alembic_version SET version_num = '0099_next'"))
        conn.execute(sql("UPDATE schema_compat SET revision = '0099_next', compatible_from = '0099_next'"))
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "'0099_next' or newer" in ready.json()["checks"]["database"]["detail"]


def test_actions_off_without_a_token_then_retry(app_env, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, store = app_env
    client = TestClient(build_app(cfg))
    assert client.post("/actions/retry").status_code == 403  # no token configured: read-only
    monkeypatch.setenv("HTTP_APP_TEST_TOKEN", TOKEN)
    assert client.post("/actions/retry", headers={"Authorization": "Bearer nope-nope-nope"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/actions/nothing", headers=auth).status_code == 404
    assert client.post("/actions/retry", headers=auth, json={"destination": "elsewhere"}).status_code == 400
    reply = client.post("/actions/retry", headers=auth, json={"destination": "pacs"})
    assert reply.status_code == 200 and reply.json() == {"action": "retry", "requeued": 1}
    with store.engine.connect() as conn:
        assert conn.execute(outbox.select()).mappings().one()["state"] == "pending"


def test_json_log_lines_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_ENDPOINT_KEY", "s3cr3t-value-123456")
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("test.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("study %s from 10.1.2.3 sent with Bearer abcdefghijkl and key %s", "1.2.840.113619.2.55.3",
                       "s3cr3t-value-123456")
    finally:
        logger.removeHandler(handler)
    line = json.loads(buf.getvalue().strip())
    assert line["level"] == "WARNING" and line["logger"] == "test.jsonlog" and line["pid"] == os.getpid()
    assert line["uids"] == ["1.2.840.113619.2.55.3"]
    assert "abcdefghijkl" not in line["event"] and "s3cr3t-value-123456" not in line["event"]
    assert "1.2.840.113619.2.55.3" in line["event"] and line["time"].endswith("+00:00")


def test_uids_in_skips_ip_addresses() -> None:
    assert uids_in("from 192.168.1.20: 2.25.12345 and 1.2.3.4.5 then 2.25.12345") == ["2.25.12345", "1.2.3.4.5"]


def test_operations_guide_and_dashboard_name_every_metric(app_env) -> None:
    """Every metric the node exposes is in docs/operations.md; the dashboard uses no metric that does not exist."""
    import re

    from prometheus_client.parser import text_string_to_metric_families

    from node.ops import metrics  # noqa: F401  (registers the node's counters and histograms)

    cfg, _ = app_env
    text = TestClient(build_app(cfg)).get("/metrics").text
    exposed = {f.name for f in text_string_to_metric_families(text)
               if f.name.startswith("dicom_node_") and not f.name.endswith("_created")}
    from node.ops.metrics import REGISTERED

    exposed |= REGISTERED
    repo = Path(__file__).resolve().parents[1]
    guide = (repo / "docs" / "operations.md").read_text()
    missing = sorted(n for n in exposed if f"`{n}`" not in guide and f"`{n}_total`" not in guide)
    assert not missing, f"metrics not listed in docs/operations.md: {missing}"
    dashboard = (repo / "config" / "grafana-dashboard.json").read_text()
    used = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in re.findall(r"dicom_node_\w+", dashboard)}
    assert used and not used - exposed, f"the dashboard uses unknown metrics: {sorted(used - exposed)}"


def test_seg_preview_tints_the_masked_pixels_of_the_source_slices(data: Path) -> None:
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.uid import generate_uid

    from dicom_out.algorithm import AlgorithmInfo
    from dicom_out.seg import SegmentSpec, build_segmentation
    from node.http.preview import seg_png

    paths = [data / "ct" / "chest_ct_5mm_64slices" / f"1-{n:02d}.dcm" for n in (30, 31, 32)]
    sources = [pydicom.dcmread(p) for p in paths]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    masks = np.zeros((3, rows, cols, 1), dtype=bool)
    masks[:, 100:200, 150:300, 0] = True  # the same rectangle on every slice
    seg = build_segmentation(source_images=sources, masks=masks, segments=[SegmentSpec.from_model_category("liver", "liver")],
                             algorithm=AlgorithmInfo("MedImageParse", "test"), series_instance_uid=generate_uid(),
                             sop_instance_uid=generate_uid(), series_number=99)
    by_uid = {str(ds.SOPInstanceUID): str(p) for ds, p in zip(sources, paths)}
    img = np.asarray(Image.open(io.BytesIO(seg_png(seg, by_uid.get))).convert("RGB")).astype(int)
    assert img.shape[1] == 3 * cols  # three slices side by side
    for k in range(3):
        tile = img[:, k * cols:(k + 1) * cols]
        inside, outside = tile[120:180, 170:280], tile[300:400, 350:450]
        assert (inside[..., 0] - inside[..., 1]).mean() > 40  # red over the mask
        assert np.abs(outside[..., 0] - outside[..., 1]).max() == 0  # grey elsewhere


def test_sr_findings_lists_every_sentence_boxed_or_not_once(data: Path) -> None:
    """The study page's findings of the node's own SR: each sentence the writer was given, a box or two or none."""
    import pydicom
    from pydicom.uid import generate_uid

    from dicom_out.algorithm import AlgorithmInfo
    from dicom_out.sr import GroundedFinding, build_findings_sr
    from node.http.preview import sr_findings

    given = [GroundedFinding("Cardiomegaly is present.", ((100.0, 200.0, 400.0, 600.0),)),
             GroundedFinding("Bilateral effusions.", ((10.0, 20.0, 30.0, 40.0), (500.0, 600.0, 700.0, 800.0))),
             GroundedFinding("No pneumothorax.", ())]
    frontal = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm", stop_before_pixels=True)
    sr = build_findings_sr(frontal=frontal, evidence=[frontal], findings=given,
                           algorithm=AlgorithmInfo("CXRReportGen", "test"), series_instance_uid=generate_uid(),
                           sop_instance_uid=generate_uid(), series_number=901)
    assert sorted(sr_findings(sr)) == sorted(f.text for f in given)


def test_status_page_hides_phi_unless_asked(tmp_path: Path, data: Path) -> None:
    import pydicom

    from node.store.schema import instances, studies

    ds = pydicom.dcmread(data / "cxr" / "cr_pa_mono1_uncompressed.dcm")
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "DOE^JANE", "PID-4242", "ACC-777"
    path = tmp_path / "i.dcm"
    ds.save_as(path)
    t = time.time()
    for show in (False, True):
        cfg = parse_config({"node": {"storage_dir": str(tmp_path / f"var{show}")},
                            "http": {"port": 18099, "show_phi": show}}, tmp_path / "n.yaml", tmp_path)
        store = Store.open(cfg.database_url)
        with store.engine.begin() as conn:
            conn.execute(insert(studies).values(study_uid="1.2.3.9", state="receiving", version=0,
                                                first_received_at=t, last_received_at=t))
            conn.execute(insert(instances).values(sop_instance_uid="1.2.3.9.1", study_uid="1.2.3.9",
                                                  series_uid="1.2.3.9.2", sop_class_uid=str(ds.SOPClassUID),
                                                  transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(path),
                                                  size_bytes=1, calling_ae="X", received_at=t))
        client = TestClient(build_app(cfg))
        pages = client.get("/").text + client.get("/studies/1.2.3.9").text
        for phi in ("DOE^JANE", "PID-4242", "ACC-777"):
            assert (phi in pages) is show
        assert "1.2.3.9" in pages
