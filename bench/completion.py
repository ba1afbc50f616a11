"""Completion latency: a 2-image chest X-ray study, last instance acknowledged -> SR and GSPS stored in the PACS, when
the quiet timer (10 s) decides it, against an MPPS (N-SET COMPLETED right after the last image, as a modality sends
it) and against the rule's expected content (PA + lateral), on one node in one run, alternately.

Besides the end-to-end time, the node's own decision record gives last instance -> decision per trigger (the
target: within 0.5 s for MPPS and expected content). The reference of each ratio is the timer's figure of the same
run (above 1: that many times sooner).

    python -m bench.completion [--runs 3] [--quick] [--quiet 10]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the node-process, modality and PACS helpers the e2e tests use

VARIANTS = ("timer", "mpps", "expected")


def _config(tmp: Path, endpoint: str, pacs: tuple[str, int], quiet: float) -> dict[str, Any]:
    from support.nodeproc import node_config

    cfg = node_config(tmp, endpoint_url=endpoint, pacs=pacs, quiet=quiet)
    cfg["node"]["accept_mpps"] = True
    base = dict(cfg["rules"][0])
    base["match"] = {**base["match"], "StationName": ["TIMER", "MPPS"]}
    expected = {**base, "name": "chest-expected", "match": {**base["match"], "StationName": "EXPECTED"},
                "complete_when": {"series": [{"match": {"ViewPosition": "PA"}}, {"match": {"ViewPosition": "LL"}}]}}
    cfg["rules"] = [base, expected]
    return cfg


def _study(out: Path, data: Path, station: str) -> list[Path]:
    import pydicom
    from support.studies import derive_cxr_study

    files = derive_cxr_study(out, data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StationName = station
        ds.save_as(f, enforce_file_format=True)
    return files


def one_study(node: Any, pacs: Any, files: list[Path], variant: str, timeout: float) -> tuple[float, float]:
    """Send one study the ``variant`` way; (last ack -> both results in the PACS, last instance -> decision)."""
    import pydicom
    from pydicom.uid import generate_uid
    from support.dcmtk import storescu, transfer_syntax_flag
    from support.modality import instance_refs, mpps_create, mpps_set

    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    mpps = generate_uid()
    if variant == "mpps":
        assert mpps_create(node.port, mpps, study) == 0x0000
    for f in files:  # one association per image, as a modality sending each image when it is taken
        proc = storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f)])
        assert proc.returncode == 0, proc.stderr
    t_ack = time.time()
    if variant == "mpps":
        assert mpps_set(node.port, mpps, "COMPLETED", instance_refs(files)) == 0x0000
    deadline = time.monotonic() + timeout
    while True:
        got = [p for p in list(pacs.received)
               if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study]
        if len(got) >= 2:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{variant}: results did not arrive:\n{node.logs()[-3000:]}")
        time.sleep(0.01)
    total = max(p.stat().st_mtime for p in got) - t_ack
    db = Path(node.config["node"]["storage_dir"]) / "node.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        trigger, decided, last = con.execute("SELECT trigger, decided_at, last_instance_at FROM decisions "
                                             "WHERE study_uid = ?", (study,)).fetchone()
    finally:
        con.close()
    assert trigger == variant, f"{variant} study decided by {trigger}"
    return total, decided - last


def measure(runs: int, data: Path, quiet: float, warm_up: bool = True) -> dict[str, dict[str, list[float]]]:
    from support.nodeproc import NodeProcess
    from support.pacs import MiniPACS

    from node.emulator.server import EmulatorServer

    out: dict[str, dict[str, list[float]]] = {v: {"total": [], "decision": []} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with EmulatorServer("127.0.0.1", 0) as emulator, MiniPACS(folder=tmp / "pacs") as pacs:
            node = NodeProcess(tmp, _config(tmp, emulator.url, (pacs.ae_title, pacs.port), quiet)).start()
            try:
                node.wait_worker_started()
                if warm_up:  # imports, first connections: not measured
                    one_study(node, pacs, _study(tmp / "warm", data, "EXPECTED"), "expected", 120)
                order = [VARIANTS[(i + r) % len(VARIANTS)] for r in range(runs) for i in range(len(VARIANTS))]
                for n, variant in enumerate(order):
                    total, decision = one_study(node, pacs, _study(tmp / f"s{n}", data, variant.upper()), variant,
                                                quiet + 120)
                    out[variant]["total"].append(total)
                    out[variant]["decision"].append(decision)
            finally:
                node.stop()
    return out


def run(quick: bool) -> list[dict[str, Any]]:
    """The rows for ``python -m bench`` (group ``completion``)."""
    from support.data import data_dir

    quiet = 3.0 if quick else 10.0  # --quick (CI's smoke run) only shows that it runs
    got = measure(1 if quick else 3, data_dir(), quiet, warm_up=not quick)
    med = {v: {k: statistics.median(vals) for k, vals in d.items()} for v, d in got.items()}
    ref = med["timer"]["total"]
    rows = [{"group": "completion", "name": f"timer ({quiet:g} s): last ack -> SR+GSPS in PACS", "value":
             ref, "unit": "s", "reference": None, "ref_value": None, "ratio": None,
             "note": f"decision {med['timer']['decision']:.2f} s after the last instance"}]
    for variant, what in (("mpps", "MPPS N-SET after the last image"), ("expected", "expected content PA + LL")):
        rows.append({"group": "completion", "name": f"{what}: last ack -> SR+GSPS in PACS",
                     "value": med[variant]["total"], "unit": "s", "reference": f"quiet timer {quiet:g} s",
                     "ref_value": ref, "ratio": ref / med[variant]["total"] if med[variant]["total"] > 0 else None,
                     "note": f"decision {med[variant]['decision']:.3f} s after the last instance (target < 0.5 s)"})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run of each (CI smoke mode)")
    p.add_argument("--quiet", type=float, default=10.0, help="the quiet timer (node.study_complete_after_seconds)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args(argv)
    got = measure(1 if args.quick else args.runs, Path(args.data), args.quiet)
    print(json.dumps({v: {k: {"median": statistics.median(x), "all": [round(y, 3) for y in x]} for k, x in d.items()}
                      for v, d in got.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
