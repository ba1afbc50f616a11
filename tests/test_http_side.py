"""The HTTP side end to end: ``dicom-node serve`` with ``http:`` on, a chest X-ray study from dcmtk storescu,
the emulator, a mini PACS that counts every C-STORE it answers.

The metrics test scrapes ``/metrics`` and checks each counter against what the test sent and what the peers
counted (never against the node's own database); it also kills the worker and checks the counters survive.
The browser test opens the status page in headless Chromium (selenium) and checks what a person would see; the
screenshot stays in the test's folder (``status-page.png``, ``study-page.png``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pydicom
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from node.config import load_config

from support.dcmtk import echoscu, storescu
from support.nodekit import send, wait_until
from support.nodeproc import NodeProcess, node_config
from support.pacs import MiniPACS
from support.ports import free_port
from support.studies import derive_cxr_study

pytestmark = pytest.mark.slow

TOKEN = "test-http-token-0123456789"


class Run:
    """One end-to-end run shared by the tests of this module."""

    def __init__(self, tmp: Path, data: Path) -> None:
        from node.emulator.server import EmulatorServer

        self.tmp = tmp
        self.study = derive_cxr_study(tmp / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                                      data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
        self.emulator = EmulatorServer("127.0.0.1", 0).start()
        self.pacs = MiniPACS(folder=tmp / "pacs").start()
        self.http_port = free_port()
        cfg = node_config(tmp, endpoint_url=self.emulator.url, pacs=("PACS", self.pacs.port),
                          http={"host": "127.0.0.1", "port": self.http_port, "token_env": "HTTP_SIDE_TEST_TOKEN"},
                          logging={"format": "json"})
        cfg["node"]["allowed_calling_ae_titles"] = ["STORESCU"]
        os.environ["HTTP_SIDE_TEST_TOKEN"] = TOKEN
        self.node = NodeProcess(tmp, cfg).start()
        self.base = f"http://127.0.0.1:{self.http_port}"
        wait_until(lambda: _get(self.base + "/healthz") == 200, 60, "the HTTP side to answer")

    def stop(self) -> None:
        self.node.stop()
        self.pacs.stop()
        self.emulator.stop()
        os.environ.pop("HTTP_SIDE_TEST_TOKEN", None)


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    text = httpx.get(base + "/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Run]:
    r = Run(tmp_path_factory.mktemp("http-side"), data)
    try:
        send(r.node, r.study)  # one storescu association per file
        bad = pydicom.dcmread(r.study[0])
        del bad.StudyInstanceUID  # quarantined: answered 0xC000, counted under invalid-uid
        bad.SOPInstanceUID = bad.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        bad.save_as(r.tmp / "no-study-uid.dcm")
        storescu("127.0.0.1", r.node.port, [r.tmp / "no-study-uid.dcm"])
        refused = echoscu("127.0.0.1", r.node.port, "AINODE", calling_ae="INTRUDER")
        assert refused.returncode != 0, "an AE title outside the allow-list must be refused"
        wait_until(lambda: len(r.pacs.stored) >= 2, 120, "SR and GSPS at the PACS")
        time.sleep(1.0)  # nothing else is due; a late duplicate send would show in the PACS count below
        yield r
    finally:
        r.stop()


def test_metrics_count_what_was_sent(run: Run) -> None:
    m = scrape(run.base)
    sent_bytes = sum(p.stat().st_size for p in run.study)
    answered = [e for e in run.emulator.requests if e["status"] is not None]
    assert total(m, "dicom_node_associations_total", calling_ae="STORESCU", result="accepted") == len(run.study) + 1
    assert total(m, "dicom_node_associations_total", calling_ae="(not allowed)", result="rejected") == 1
    assert total(m, "dicom_node_instances_received_total", calling_ae="STORESCU") == len(run.study)
    # the spool file is what pynetdicom wrote: the same data set, its own file meta (a few bytes more or less)
    assert abs(total(m, "dicom_node_received_bytes_total", calling_ae="STORESCU") - sent_bytes) < 0.05 * sent_bytes
    assert total(m, "dicom_node_instances_received_total", sop_class="Computed Radiography Image Storage") == 1
    assert total(m, "dicom_node_cstore_responses_total", status="0x0000") == len(run.study)
    assert total(m, "dicom_node_cstore_responses_total", status="0xC000") == 1
    assert total(m, "dicom_node_quarantined_total", reason="invalid-uid") == 1
    assert total(m, "dicom_node_quarantined_total") == 1
    assert total(m, "dicom_node_studies_completed_total") == 1
    assert total(m, "dicom_node_jobs_total", model="cxrreportgen", rule="chest-xray-findings", outcome="done") == 1
    assert total(m, "dicom_node_endpoint_responses_total", endpoint="cxr", code="200") == len(answered) >= 1
    assert total(m, "dicom_node_endpoint_request_seconds_count", endpoint="cxr") == len(run.emulator.requests)
    assert total(m, "dicom_node_sends_total", destination="pacs", verdict="delivered") == len(run.pacs.stored) == 2
    assert total(m, "dicom_node_result_delivery_seconds_count", destination="pacs") == len(run.pacs.stored)
    assert total(m, "dicom_node_outbox_depth", destination="pacs") == 0
    assert total(m, "dicom_node_parked_results", destination="pacs") == 0
    assert total(m, "dicom_node_spool_free_bytes") > 0
    assert total(m, "dicom_node_worker_up") == 1
    ready = httpx.get(run.base + "/readyz", timeout=30)
    assert ready.status_code == 200, ready.text

    # The worker dies: serve restarts it; what it counted is still summed.
    pidfile = load_config(run.node.config_path).node_dir / "worker.pid"  # storage_dir, or its nodes/<id> (PostgreSQL)
    old = int(pidfile.read_text())
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: pidfile.read_text().strip() != str(old), 30, "serve to restart the worker")
    after = scrape(run.base)
    assert total(after, "dicom_node_jobs_total", outcome="done") == 1
    assert total(after, "dicom_node_sends_total", verdict="delivered") == 2
    wait_until(lambda: httpx.get(run.base + "/readyz", timeout=30).status_code == 200, 30, "ready again")


def test_write_actions_need_the_token(run: Run) -> None:
    assert httpx.post(run.base + "/actions/retry", timeout=30).status_code == 401
    bad = httpx.post(run.base + "/actions/retry", headers={"Authorization": "Bearer wrong-token-123"}, timeout=30)
    assert bad.status_code == 401
    ok = httpx.post(run.base + "/actions/retry", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ok.status_code == 200 and ok.json() == {"action": "retry", "requeued": 0}
    assert TOKEN not in run.node.logs()


def healthcheck(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "healthcheck", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def config_variant(run: Run, name: str, **node_or_http: dict) -> Path:
    """The running node's configuration with some keys of its ``node``/``http`` sections changed."""
    doc = yaml.safe_load(run.node.config_path.read_text())
    for section, changes in node_or_http.items():
        doc[section] = {**(doc.get(section) or {}), **changes}
    path = run.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_healthcheck_command(run: Run) -> None:
    """Both paths of ``dicom-node healthcheck``, healthy and not: ``/readyz`` with the HTTP side on, a C-ECHO to the
    Storage SCP without it (this node has an AE title allow-list, as a site's would)."""
    ready = healthcheck(run.node.config_path)
    assert ready.returncode == 0, ready.stderr
    gone = healthcheck(config_variant(run, "http-gone", http={"port": free_port()}))
    assert gone.returncode == 1 and "HTTP side not answering" in gone.stderr, gone.stderr

    echoes_before = total(scrape(run.base), "dicom_node_associations_total", result="accepted")
    echo = healthcheck(config_variant(run, "no-http", http={"port": None}))
    assert echo.returncode == 0, echo.stderr
    # the C-ECHO reached this node's SCP: one more association accepted there
    assert total(scrape(run.base), "dicom_node_associations_total", result="accepted") == echoes_before + 1
    closed = healthcheck(config_variant(run, "scp-gone", http={"port": None}, node={"port": free_port()}))
    assert closed.returncode == 1 and "did not answer" in closed.stderr, closed.stderr


def test_json_logs_one_object_per_line(run: Run) -> None:
    lines = [json.loads(line) for line in run.node.logs().splitlines() if line.strip()]
    assert {"time", "level", "process", "pid", "logger", "event"} <= set(lines[0])
    assert len({line["pid"] for line in lines}) >= 3  # serve, the worker, the HTTP side
    study_uid = str(pydicom.dcmread(run.study[0], stop_before_pixels=True).StudyInstanceUID)
    assert any(study_uid in line.get("uids", []) for line in lines)
    assert not any("DEMO^PATIENT" in line["event"] or "DEMO-0001" in line["event"] for line in lines)


def test_status_page_in_a_browser(run: Run) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from support.tools import require_tool

    require_tool("chromium")
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500"):
        opts.add_argument(flag)
    opts.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    study_uid = str(pydicom.dcmread(run.study[0], stop_before_pixels=True).StudyInstanceUID)
    try:
        driver.get(run.base + "/")
        rows = driver.find_elements(By.CSS_SELECTOR, "#studies tr.study")
        row = next(r for r in rows if study_uid in r.text)
        assert "chest-xray-findings: done" in row.text
        assert "pacs: 2 delivered" in row.find_element(By.CLASS_NAME, "sends").text
        assert "0 parked" in driver.find_element(By.ID, "outbox-summary").text
        driver.save_screenshot(str(run.tmp / "status-page.png"))
        for phi in ("DEMO^PATIENT", "DEMO", "DEMO-0001"):
            assert phi not in driver.page_source.replace("dicom-node", ""), f"PHI {phi!r} on the page"
        row.find_element(By.TAG_NAME, "a").click()
        timeline = driver.find_element(By.ID, "timeline").text
        assert "study complete" in timeline and "-> pacs: delivered, status 0x0000" in timeline
        findings = [li.text for li in driver.find_elements(By.CSS_SELECTOR, ".result .findings li")]
        said = model_sentences(run.emulator.requests)  # what the model answered, read from the emulator's log
        assert any(boxes for _, boxes in said) and any(not boxes for _, boxes in said), said
        assert sorted(findings) == sorted({text for text, _ in said}), "every finding, boxed or not, once"
        img = driver.find_element(By.CSS_SELECTOR, ".result[data-kind=gsps] img.preview")
        wait_until(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img),
                   30, "the GSPS preview to load")
        driver.save_screenshot(str(run.tmp / "study-page.png"))
        print(f"screenshots: {run.tmp / 'status-page.png'} {run.tmp / 'study-page.png'}")
        keep = os.environ.get("DICOM_NODE_SCREENSHOTS")
        if keep:  # how docs/ gets its pictures
            driver.save_screenshot(str(Path(keep) / "status-study.png"))
            driver.get(run.base + "/")
            driver.save_screenshot(str(Path(keep) / "status-page.png"))
    finally:
        driver.quit()


def model_sentences(requests: list[dict]) -> list[tuple[str, list]]:
    """(sentence, boxes) of the CXRReportGen answer (200) in the emulator's request log, as the model sent them
    (the sample client's shape: ``[{"output": "<JSON list of [text, boxes or null]>"}]``)."""
    answered = [r for r in requests if r["status"] == 200 and r["reply"] is not None]
    assert answered, [r["status"] for r in requests]
    reply = answered[-1]["reply"]  # the answer the node went on with
    return [(text, boxes or []) for text, boxes in json.loads(reply[0]["output"])]


def test_http_side_restarted_when_it_dies(run: Run) -> None:
    """serve supervises the HTTP side like the worker: SIGKILL it, and the page answers again."""
    children = Path(f"/proc/{run.node.proc.pid}/task/{run.node.proc.pid}/children").read_text().split()
    http_pid = next(int(p) for p in children
                    if b"\0http\0" in Path(f"/proc/{p}/cmdline").read_bytes())
    os.kill(http_pid, signal.SIGKILL)
    wait_until(lambda: _get(run.base + "/healthz") is None, 30, "the HTTP side to go away")
    wait_until(lambda: _get(run.base + "/healthz") == 200, 60, "serve to restart the HTTP side")
    m = scrape(run.base)
    assert total(m, "dicom_node_jobs_total", outcome="done") == 1  # its own restart loses no count either
