"""How long the prior lookup adds to a chest X-ray study: ``python -m bench.priors_lookup --runs 5``.

A real Orthanc on loopback holds a prior study (derived from the test data: frontal, a radiologist's SR and the
node's own SR). Each run gives the lookup a fresh node database and spool, so the prior is really queried and
retrieved (C-FIND study/series/image, then C-MOVE into the node's own Storage SCP, or C-GET); a last run per method
repeats the lookup with the prior already held (C-FIND only). The lookup runs in the job before the model call,
so its time adds to the study's time one for one; converting the prior image to PNG adds a little more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/support: the Orthanc and prior-study helpers the tests use


def run(runs: int, data: Path) -> dict:
    import pydicom

    from node.config import parse_config
    from node.models.cxrreportgen.priors import PriorFetcher
    from node.dicom.scp import StorageSCP
    from node.flow.intake import Intake
    from node.store.spool import Spool
    from node.store.state import Store
    from support.orthanc import Orthanc
    from support.ports import free_port
    from support.studies import CURRENT_DATE, derive_cxr_study, make_prior_study

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prior = make_prior_study(tmp / "prior", data)
        (frontal,) = derive_cxr_study(tmp / "cur", data / "cxr" / "cr_pa_mono1_uncompressed.dcm", None,
                                      study_date=CURRENT_DATE)
        current = pydicom.dcmread(frontal, stop_before_pixels=True)
        node_port = free_port()
        with Orthanc(tmp / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", node_port)}) as pacs:
            for f in prior.files:
                pacs.upload(f)
            for method in ("c-move", "c-get"):
                times = []
                for i in range(runs + 1):
                    var = tmp / f"{method}-{min(i, runs - 1)}"  # the extra run reuses the last store: cached
                    cfg = parse_config({
                        "node": {"ae_title": "AINODE", "host": "127.0.0.1", "port": node_port, "storage_dir": str(var),
                                 "min_free_disk_mb": 0},
                        "destinations": {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
                        "priors": {"query": "pacs", "method": method}})
                    store = Store.open(cfg.database_url)
                    spool = Spool(cfg.storage_dir)
                    spool.create()
                    scp = StorageSCP(cfg, store, spool, Intake(cfg, store, queue=None))
                    scp.start()
                    try:
                        t0 = time.perf_counter()
                        result = PriorFetcher(cfg, store, spool).fetch(current)
                        times.append(time.perf_counter() - t0)
                    finally:
                        scp.stop(drain_seconds=1)
                    if result.state != "found":
                        raise SystemExit(f"{method}: {result.outcome}")
                fresh = times[:runs]
                out[method] = {"runs": runs, "median_s": round(statistics.median(fresh), 3),
                               "min_s": round(min(fresh), 3), "max_s": round(max(fresh), 3),
                               "prior_already_held_s": round(times[-1], 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = p.parse_args(argv)
    print(json.dumps(run(args.runs, args.data), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
