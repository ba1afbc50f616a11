"""Node overhead: last instance acknowledged -> results stored in a real Orthanc, minus the endpoint's own time
(``endpoint_seconds`` of the job, as the node's client measured it) and the quiet timer.

* Chest X-ray: the 2-image study through CXRReportGen (SR + GSPS), see :mod:`bench.cxr_overhead`.
* CT: the 64-slice CT through MedImageParse 3D (``medimageparse3d`` endpoint -> one SEG).

No tool does this job, so the figures are absolute; the targets are < 1 s (CXR) and < 5 s (CT).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import DATA, ct_files, dcmtk_env, median, row, storescu_cmd

GROUP = "overhead"
QUIET = 1.0


def cxr_rows(quick: bool) -> list[dict[str, Any]]:
    from .cxr_overhead import run as cxr_run

    res = cxr_run(1 if quick else 5, DATA)
    return [row(GROUP, "chest X-ray 2 images -> SR + GSPS in Orthanc", res["overhead_s_median"], "s",
                note=(f"target < 1 s; total {res['total_s_median']:.2f} s = quiet {res['quiet_timer_s']:g} s + endpoint "
                      f"{res['endpoint_s_median']:.2f} s + overhead; max {res['overhead_s_max']:.2f} s over "
                      f"{res['runs']} run(s)"))]


def _fresh_ct(dst: Path, description: str | None = None) -> list[Path]:
    """The 64-slice CT as a new study (new Study/Series/SOP UIDs), so each run is a new study for the node;
    ``description``: its StudyDescription (rules can route on it)."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for k, f in enumerate(ct_files()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if description is not None:
            ds.StudyDescription = description
        path = dst / f"{k:03d}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def ct_rows(quick: bool) -> list[dict[str, Any]]:
    from support.nodeproc import NodeProcess, node_config
    from support.orthanc import Orthanc

    from node.emulator.server import EmulatorServer

    from .cxr_overhead import wait_for_results

    runs = 1 if quick else 3
    overheads, totals, endpoint = [], [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp / "orthanc") as pacs:
            cfg = node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port), quiet=QUIET)
            base = emulator.url.rstrip("/").rsplit("/score", 1)[0]
            cfg["endpoints"]["ct3d"] = {"model": "medimageparse3d", "url": f"{base}/medimageparse3d/score",
                                        "auth": "none", "timeout_seconds": 120, "max_attempts": 2}
            cfg["rules"].append({"name": "ct-lung-3d", "match": {"Modality": "CT"}, "endpoint": "ct3d",
                                 "send_to": ["pacs"], "params": {"prompt": "lung"}})
            node = NodeProcess(tmp, cfg)
            node.start()
            try:
                for i in range(runs):
                    files = _fresh_ct(tmp / f"ct{i}")
                    before = len(pacs.instances())
                    proc = subprocess.run(storescu_cmd(node.port, files, "AINODE"), env=dcmtk_env(True),
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr[-2000:])
                    total, ep = wait_for_results(node, pacs, before + 1, time.monotonic(), timeout=300)
                    totals.append(total)
                    endpoint.append(ep)
                    overheads.append(total - QUIET - ep)
            finally:
                node.stop()
    return [row(GROUP, "CT 64 slices -> SEG in Orthanc (MedImageParse 3D)", median(overheads), "s",
                note=(f"target < 5 s; total {median(totals):.2f} s = quiet {QUIET:g} s + endpoint "
                      f"{median(endpoint):.2f} s + overhead; max {max(overheads):.2f} s over {runs} run(s)"))]


def run(quick: bool) -> list[dict[str, Any]]:
    return cxr_rows(quick) + ct_rows(quick)
