"""Model calls and wall time per CT study through MedImageParse 3D: one prompt per call (``prompts_per_call: 1``,
before) against the rule's prompts joined with '&' in one call (the default, as the model card sends them).

The 64-slice CT goes to one ``dicom-node serve`` with two MedImageParse 3D endpoints on the emulator, one per
setting; the rule has five prompts (abdominal organs, as the card's example). Calls are counted in the emulator's
request log, the wall time runs from the last instance acknowledged to the SEG written (the job done), quiet timer
included. The emulator answers each call after ``MODEL_SECONDS`` (``--quick``: ``QUICK_MODEL_SECONDS``), a stand-in
for the model's time: how the real model's time grows with the prompts of one call is not documented, so the time
figure is the saving in round trips, uploads of the volume (5 MB/s per endpoint) and per-call model set-up only.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import dcmtk_env, median, row, storescu_cmd
from .overhead import _fresh_ct

GROUP = "endpoints"
QUIET = 1.0
PROMPTS = "liver & spleen & pancreas & left kidney & right kidney"
MODEL_SECONDS = 2.0
QUICK_MODEL_SECONDS = 0.5
SETTINGS = {"one-per-call": 1, "joined": None}  # None: the default (the model card's)


def _job_done(node: Any, study_uid: str, t_ack: float, timeout: float) -> tuple[float, float]:
    """(seconds since ``t_ack`` until the study's job is done, its endpoint seconds)."""
    from support.nodekit import db_rows

    deadline = t_ack + timeout
    while True:
        rows = db_rows(node, "SELECT state, endpoint_seconds, outcome FROM jobs WHERE study_uid = ?", study_uid)
        if rows and rows[0][0] in ("done", "failed", "skipped"):
            if rows[0][0] != "done":
                raise RuntimeError(f"the CT job ended {rows[0][0]}: {rows[0][2]}")
            return time.monotonic() - t_ack, float(rows[0][1] or 0.0)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the CT job did not finish:\n{node.logs()[-4000:]}")
        time.sleep(0.02)


def measure(runs: int, model_seconds: float) -> dict[str, dict[str, list[float]]]:
    """{setting: {"calls": [...], "wall": [...], "endpoint": [...]}} over ``runs`` CT studies per setting."""
    import pydicom
    from support.nodeproc import NodeProcess, node_config

    from node.emulator.server import EmulatorServer

    out: dict[str, dict[str, list[float]]] = {s: {"calls": [], "wall": [], "endpoint": []} for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmpdir, EmulatorServer(delay_seconds=model_seconds) as emulator:
        tmp = Path(tmpdir)
        cfg = node_config(tmp, endpoint_url=emulator.url, pacs=None, quiet=QUIET)
        cfg["rules"] = []
        for name, per_call in SETTINGS.items():
            cfg["endpoints"][name] = {"model": "medimageparse3d", "url": emulator.model_url("medimageparse3d"),
                                      "auth": "none", "timeout_seconds": 120, "max_attempts": 2}
            if per_call is not None:
                cfg["endpoints"][name]["prompts_per_call"] = per_call
            cfg["rules"].append({"name": name, "match": {"StudyDescription": f"bench {name}"}, "endpoint": name,
                                 "params": {"prompt": PROMPTS}})
        node = NodeProcess(tmp, cfg)
        node.start()
        node.wait_worker_started()
        try:
            for i in range(runs):
                for name in (SETTINGS if i % 2 == 0 else reversed(SETTINGS)):  # no one always goes first
                    files = _fresh_ct(tmp / f"{name}-{i}", f"bench {name}")
                    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                    before = len(emulator.requests)
                    proc = subprocess.run(storescu_cmd(node.port, files, "AINODE"), env=dcmtk_env(True),
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr[-2000:])
                    wall, endpoint = _job_done(node, study, time.monotonic(), timeout=300)
                    out[name]["calls"].append(float(len(emulator.requests) - before))
                    out[name]["wall"].append(wall)
                    out[name]["endpoint"].append(endpoint)
        finally:
            node.stop()
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    model_seconds = QUICK_MODEL_SECONDS if quick else MODEL_SECONDS
    runs = 1 if quick else 3
    got = measure(runs, model_seconds)
    before, after = got["one-per-call"], got["joined"]
    n = len(PROMPTS.split("&"))
    return [
        row(GROUP, f"CT 64 slices, {n} prompts: MedImageParse 3D calls per study", median(after["calls"]), "calls",
            reference="prompts_per_call 1", ref_value=median(before["calls"]), higher_is_better=False,
            note=f"joined with '&' (default prompts_per_call) vs one call per prompt; counted in the emulator's "
                 f"request log over {runs} study(ies) each"),
        row(GROUP, f"CT 64 slices, {n} prompts: last instance acked -> SEG written", median(after["wall"]), "s",
            reference="prompts_per_call 1", ref_value=median(before["wall"]), higher_is_better=False,
            note=f"quiet timer {QUIET:g} s included; emulated model time {model_seconds:g} s per call (endpoint "
                 f"{median(after['endpoint']):.2f} s vs {median(before['endpoint']):.2f} s); the real model's time "
                 f"per prompt of a joined call is not documented"),
    ]
