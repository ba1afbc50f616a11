"""Node overhead for a 2-image chest X-ray study: last instance acknowledged -> results stored in Orthanc,
minus the endpoint's own time and the quiet timer. No reference tool does this job, so the figure is absolute.

    python -m bench.cxr_overhead [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc and node-process helpers the e2e tests use


def wait_for_results(node, pacs, expected: int, t_ack: float, *, timeout: float) -> tuple[float, float]:
    """Wait until ``pacs`` holds ``expected`` instances; (seconds since ``t_ack``, the last job's endpoint seconds).

    The endpoint time is what the node's own client measured (``dicom-node status --json``), so subtracting it and
    the quiet timer from the total leaves the node's overhead.
    """
    deadline = t_ack + timeout
    while len(pacs.instances()) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"results did not arrive:\n{node.status()}\n{node.logs()[-4000:]}")
        time.sleep(0.02)
    total = time.monotonic() - t_ack
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "node.cli", "status", "--config", str(node.config_path), "--json"],
        capture_output=True, text=True, check=True).stdout)
    return total, status["recent_jobs"][0]["endpoint_seconds"] or 0.0


def run(runs: int, data: Path) -> dict:
    from support.dcmtk import storescu, transfer_syntax_flag
    from support.nodeproc import NodeProcess, node_config
    from support.orthanc import Orthanc
    from support.studies import derive_cxr_study

    from node.emulator.server import EmulatorServer

    quiet = 1.0
    overheads, totals, endpoint = [], [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp / "orthanc") as pacs:
            node = NodeProcess(tmp, node_config(tmp, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port),
                                                quiet=quiet))
            node.start()
            try:
                for i in range(runs):
                    study = derive_cxr_study(tmp / f"study{i}", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
                    before = len(pacs.instances())
                    for f in study:
                        proc = storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f)])
                        assert proc.returncode == 0, proc.stderr
                    total, ep = wait_for_results(node, pacs, before + 2, time.monotonic(), timeout=120)
                    totals.append(total)
                    endpoint.append(ep)
                    overheads.append(total - quiet - ep)
            finally:
                node.stop()
    return {
        "runs": runs,
        "total_s_median": statistics.median(totals),
        "endpoint_s_median": statistics.median(endpoint),
        "quiet_timer_s": quiet,
        "overhead_s_median": statistics.median(overheads),
        "overhead_s_max": max(overheads),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="one run (CI smoke mode)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args(argv)
    res = run(1 if args.quick else args.runs, Path(args.data))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
