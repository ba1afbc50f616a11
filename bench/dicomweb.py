"""DICOMweb: STOW-RS delivery next to C-STORE delivery of the same results, and STOW-RS in next to C-STORE in.

Delivery: the 64-slice CT as 64 "results" in the outbox (new SOP Instance UIDs each run, written before the clock
starts), sent by ``deliver_due`` to one Orthanc with its DICOMweb plugin: by STOW-RS (16 instances per request)
and by C-STORE (one association), alternately. The reference is C-STORE.

Ingest: the same 64 slices into the node: by dcmtk storescu to the node's SCP (``dicom-node serve``), and by
STOW-RS (16 per request, from httpx) to the STOW-RS routes served by uvicorn in their own process on the same
kind of storage; each run starts fresh and empty; the reference is C-STORE in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import REPO, alternate, ct_files, free_port, median, push, row, timed, wait_port

GROUP = "dicomweb"
PER_REQUEST = 16
TOKEN = "bench-token"


def _results(folder: Path, files: Sequence[Path]) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def _deliver(base: Path, files: Sequence[Path], dest: dict[str, Any]) -> float:
    """Seconds for deliver_due to send ``files`` (fresh UIDs) to ``dest``; all must be delivered."""
    import pydicom

    from node.config import parse_config
    from node.flow.deliver import deliver_due
    from node.store.state import Store

    work = Path(tempfile.mkdtemp(dir=base))
    try:
        paths = _results(work / "results", files)
        cfg = parse_config({"node": {"storage_dir": str(work / "var")},
                            "endpoints": {"e": {"model": "cxrreportgen", "url": "http://127.0.0.1:9/", "auth": "none"}},
                            "destinations": {"d": dest}, "rules": [{"name": "r", "endpoint": "e", "send_to": ["d"]}]})
        store = Store.open(cfg.database_url)
        jid = store.create_jobs("1.2.3", 1, [("r", "e", ["1.2.3.4"])])[0]
        store.claim_job(jid, "b:1:x", 600)
        rows = []
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            rows.append({"sop_instance_uid": ds.SOPInstanceUID, "study_uid": ds.StudyInstanceUID,
                         "series_uid": ds.SeriesInstanceUID, "sop_class_uid": ds.SOPClassUID, "kind": "seg",
                         "path": str(p)})
        store.finish_job(jid, "b:1:x", state="done", outcome="ok", new_results=rows, destinations=["d"])
        t0 = time.perf_counter()
        report = deliver_due(store, cfg, "d", "b:1:x", batch=len(paths))
        elapsed = time.perf_counter() - t0
        if report.delivered != len(paths):
            raise RuntimeError(f"delivered {report.delivered} of {len(paths)}")
        store.engine.dispose()
        return elapsed
    finally:
        shutil.rmtree(work, ignore_errors=True)


STOW_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from node.config import parse_config
from node.dicomweb.stow_in import stow_routes
from node.flow.intake import Intake
from node.store.spool import Spool
from node.store.state import Store
cfg = parse_config({"node": {"storage_dir": sys.argv[1], "min_free_disk_mb": 0, "study_complete_after_seconds": 600}})
store = Store.open(cfg.database_url)
spool = Spool(cfg.storage_dir); spool.create()
app = Starlette(routes=stow_routes(cfg, store, spool, Intake(cfg, store, None),
                                   authorize=lambda r: r.headers.get("authorization") == "Bearer %s"))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
""" % TOKEN


def _stow_in(base: Path, files: Sequence[Path]) -> float:
    import httpx

    from node.dicomweb import multipart

    work = Path(tempfile.mkdtemp(dir=base))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", STOW_SERVER, str(work / "var"), str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 60)
        bodies = [multipart.encode(f.read_bytes() for f in files[i:i + PER_REQUEST])
                  for i in range(0, len(files), PER_REQUEST)]
        with httpx.Client(timeout=120, trust_env=False) as http:
            t0 = time.perf_counter()
            for body, content_type in bodies:
                rsp = http.post(f"http://127.0.0.1:{port}/dicomweb/studies", content=body,
                                headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"})
                if rsp.status_code != 200:
                    raise RuntimeError(f"STOW-RS in: HTTP {rsp.status_code}")
            return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def _cstore_in(base: Path, files: Sequence[Path]) -> float:
    from support.nodeproc import NodeProcess, node_config

    work = Path(tempfile.mkdtemp(dir=base))
    node = NodeProcess(work, node_config(work, endpoint_url="http://127.0.0.1:9", pacs=None, quiet=600))
    node.start()
    try:
        time.sleep(0.5)
        return push(node.port, [list(files)], "AINODE", nodelay=True)
    finally:
        node.kill()
        shutil.rmtree(work, ignore_errors=True)


def run(quick: bool) -> list[dict[str, Any]]:
    """STOW-RS vs C-STORE, out of the node and into it."""
    from support.orthanc import Orthanc

    files = ct_files()
    runs = 1 if quick else 5  # quick: the smoke test of `bench all --quick`, not a figure to quote
    base = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    try:
        with Orthanc(base / "orthanc", dicomweb=True) as pacs:
            stow = {"type": "dicomweb", "url": pacs.dicomweb_url, "instances_per_request": PER_REQUEST}
            dimse = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
            out = alternate({"stow": lambda: _deliver(base, files, stow),
                             "cstore": lambda: _deliver(base, files, dimse)}, runs)
        ins = alternate({"stow": lambda: _stow_in(base, files), "cstore": lambda: _cstore_in(base, files)}, runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    n = len(files)
    return [
        row(GROUP, f"deliver {n} results to Orthanc by STOW-RS ({PER_REQUEST}/request)", n / median(out["stow"]),
            "inst/s", reference="C-STORE to the same Orthanc", ref_value=n / median(out["cstore"])),
        row(GROUP, f"ingest {n} CT slices by STOW-RS in ({PER_REQUEST}/request)", n / median(ins["stow"]), "inst/s",
            reference="C-STORE in (storescu, TCP_NODELAY)", ref_value=n / median(ins["cstore"])),
    ]


__all__ = ["run", "timed"]
