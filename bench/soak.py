"""``python -m bench soak --studies N``: a month unattended, compressed. Not a CI benchmark (a short run is a test).

N small studies (CXR pairs, and every third a small CT series no rule takes) come from several dcmtk ``storescu``
senders, each resending what was not acknowledged as a modality does, while a chaos thread SIGKILLs the node at
random moments, takes the endpoint down (503/429 with Retry-After, stalls) and the PACS down. The destination
is a real Orthanc with Storage Commitment, whose Lua filter logs every C-STORE it receives, duplicates included.

At the end it prints instances sent / acknowledged / stored by the node, jobs done / parked, results expected /
delivered / extra, C-STOREs per result (max), the outages survived, and exits 1 on any loss or duplicate: every
C-STORE the PACS logged is counted per study and kind (:func:`judge_results`), so a result sent twice, a study
decided twice (new UIDs, each sent once) or an SR without its GSPS fails the run, as does a missing one.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.data import data_dir  # noqa: E402
from support.dcmtk import storescu, transfer_syntax_flag  # noqa: E402
from support.nodekit import db_rows, status_json, study_uid_of  # noqa: E402
from support.nodeproc import NodeProcess, node_config  # noqa: E402
from support.orthanc import Orthanc, Received  # noqa: E402
from support.ports import free_port  # noqa: E402
from support.studies import copy_series, derive_cxr_study  # noqa: E402

#: The results of one decision of a chest X-ray study, by modality: one SR, one GSPS (stated by the CXRReportGen
#: pipeline's contract, not read from the node; the emulator's findings always include boxes).
RESULT_KINDS = ("SR", "PR")


class Tally:
    """What the senders did (C-STOREs attempted, instances acknowledged), thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.acked: set[str] = set()


def _build_studies(work: Path, n: int, data: Path) -> list[tuple[str, list[Path]]]:
    cxr = data / "cxr"
    frontals = [cxr / "cr_pa_jpeg_baseline.dcm", cxr / "cr_pa_mono1_uncompressed.dcm"]
    ct = sorted((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm"))[:6]
    studies = []
    for i in range(n):
        if i % 3 == 2:
            files = copy_series(ct, work / f"s{i}", patient_id=f"SOAK-{i:05d}")
            studies.append(("ct", files))
        else:
            files = derive_cxr_study(work / f"s{i}", frontals[i % 2], cxr / "dx_lateral_thorax_veterinary.dcm",
                                     patient_id=f"SOAK-{i:05d}")
            studies.append(("cxr", files))
    return studies


def _sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _sender(port: int, work: "queue.Queue[list[Path]]", tally: Tally, deadline: float) -> None:
    while True:
        try:
            files = work.get_nowait()
        except queue.Empty:
            return
        for f in files:
            uid = _sop_uid(f)
            while time.monotonic() < deadline:
                with tally.lock:
                    tally.sent += 1
                try:
                    proc = storescu("127.0.0.1", port, [f], extra=[transfer_syntax_flag(f)], timeout=60)
                    ok = proc.returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
                if ok:
                    with tally.lock:
                        tally.acked.add(uid)
                    break
                time.sleep(random.uniform(0.5, 2.0))  # the node is down: a modality tries again


class Chaos:
    """Kills the node, takes the endpoint and the PACS down, at random moments of the sending window."""

    def __init__(self, node: NodeProcess, emulator: Any, pacs: Orthanc, *, kills: int, endpoint_down: float,
                 pacs_down: float, window: float, rng: random.Random) -> None:
        self.node, self.emulator, self.pacs = node, emulator, pacs
        self.events: list[tuple[float, str]] = sorted(
            [(rng.uniform(0.1, 1.0) * window, "kill") for _ in range(kills)]
            + ([(rng.uniform(0.1, 0.6) * window, "endpoint")] if endpoint_down > 0 else [])
            + ([(rng.uniform(0.2, 0.8) * window, "pacs")] if pacs_down > 0 else []))
        self.endpoint_down, self.pacs_down = endpoint_down, pacs_down
        self.log: list[str] = []
        self.longest = {"endpoint": 0.0, "pacs": 0.0, "node": 0.0}
        self.rng = rng
        self.lock = threading.Lock()  # node start/kill

    def run(self, t0: float) -> None:
        threads = []
        for at, what in self.events:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "kill":
                self._kill()
            else:  # outages run beside the kills
                th = threading.Thread(target=self._endpoint if what == "endpoint" else self._pacs, daemon=True)
                th.start()
                threads.append(th)
        for th in threads:
            th.join()

    def _kill(self) -> None:
        with self.lock:
            self.node.kill()
            down = self.rng.uniform(0.5, 3.0)
            self.log.append(f"SIGKILL node, down {down:.1f} s")
            time.sleep(down)
            self.node.start(timeout=120)
            self.longest["node"] = max(self.longest["node"], down)

    def _endpoint(self) -> None:
        self.log.append(f"endpoint down {self.endpoint_down:.0f} s (503/429 with Retry-After, stalls)")
        t = time.monotonic()
        while time.monotonic() - t < self.endpoint_down:
            self.emulator.script_faults([{"status": 503, "retry_after": 2}, {"status": 429, "retry_after": 1},
                                         {"stall_seconds": 3, "status": 503}])
            time.sleep(1.0)
        with self.emulator._state.lock:
            self.emulator._state.faults.clear()
        self.longest["endpoint"] = time.monotonic() - t

    def _pacs(self) -> None:
        self.log.append(f"PACS down {self.pacs_down:.0f} s")
        t = time.monotonic()
        self.pacs.stop(graceful=False)
        time.sleep(self.pacs_down)
        self.pacs.start()
        self.longest["pacs"] = time.monotonic() - t


def _settled(node: NodeProcess) -> bool:
    try:
        s = status_json(node)
    except Exception:  # noqa: BLE001 - killed or restarting
        return False
    busy_jobs = {k: v for k, v in s["jobs"].items() if k in ("pending", "running", "waiting")}
    busy_out = {k: v for k, v in s["outbox"].items() if k in ("pending", "acknowledged", "verifying")}
    receiving = s["studies"].get("receiving", 0)
    return not busy_jobs and not busy_out and not receiving


def soak(studies: int, *, senders: int, kills: int, endpoint_down: float, pacs_down: float, seed: int,
         settle_timeout: float, keep: bool) -> dict[str, Any]:
    from node.emulator.server import EmulatorServer

    rng = random.Random(seed)
    random.seed(seed)
    data = data_dir()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    built = _build_studies(work / "studies", studies, data)
    t_start = time.monotonic()
    with EmulatorServer("127.0.0.1", 0) as emulator:
        cfg = node_config(work, endpoint_url=emulator.url, pacs=("ORTHANC", free_port()), quiet=1.0)
        cfg["log_level"] = "WARNING"
        cfg["endpoints"]["cxr"].update(max_attempts=60, backoff_initial_seconds=0.5, backoff_max_seconds=5,
                                       timeout_seconds=20)
        cfg["destinations"]["pacs"].update(storage_commitment=True, commitment_timeout_seconds=15,
                                           max_attempts=100000, backoff_max_seconds=5)
        cfg["queue"] = {"lease_seconds": 60}
        node = NodeProcess(work, cfg)
        pacs = Orthanc(work / "orthanc", dicom_port=cfg["destinations"]["pacs"]["port"], http_port=free_port(),
                       count_cstores=True, modalities={"ainode": ("AINODE", "127.0.0.1", node.port)})
        pacs.start()
        node.start(timeout=120)
        try:
            todo: "queue.Queue[list[Path]]" = queue.Queue()
            for _, files in built:
                todo.put(files)
            tally = Tally()
            deadline = time.monotonic() + settle_timeout
            window = max(20.0, studies * 0.6)
            chaos = Chaos(node, emulator, pacs, kills=kills, endpoint_down=endpoint_down, pacs_down=pacs_down,
                          window=window, rng=rng)
            t0 = time.monotonic()
            chaos_thread = threading.Thread(target=chaos.run, args=(t0,), daemon=True)
            chaos_thread.start()
            threads = [threading.Thread(target=_sender, args=(node.port, todo, tally, deadline), daemon=True)
                       for _ in range(senders)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            chaos_thread.join()
            while time.monotonic() < deadline and not _settled(node):
                time.sleep(2.0)
            time.sleep(3.0)  # a late duplicate would show up by now
            status = status_json(node)
            stored = {r[0] for r in db_rows(node, "SELECT sop_instance_uid FROM instances")}
            cxr_uids = [study_uid_of(files[0]) for kind, files in built if kind == "cxr"]
            other_uids = [study_uid_of(files[0]) for kind, files in built if kind != "cxr"]
            # every C-STORE the PACS received (its Lua filter's log: Orthanc keeps one copy per UID)
            results = judge_results(cxr_uids, other_uids, pacs.received_log(), lambda sop: _dataset_at(pacs, sop))
            # what the node knows of a study whose results were not as expected (to diagnose, no PHI: UIDs, states)
            wrong_results = {u: {"at_pacs": why,
                                  "study": db_rows(node, "SELECT state, version FROM studies WHERE study_uid = ?", u),
                                  "instances": db_rows(node, "SELECT count(*) FROM instances WHERE study_uid = ?",
                                                       u)[0][0],
                                  "jobs": db_rows(node, "SELECT state, outcome FROM jobs WHERE study_uid = ?", u)}
                              for u, why in results.pop("wrong").items()}
        finally:
            node.stop()
            pacs.stop(graceful=False)
    all_files = [f for _, files in built for f in files]
    all_uids = {_sop_uid(f) for f in all_files}
    cxr_studies = [study_uid_of(files[0]) for kind, files in built if kind == "cxr"]
    report = {
        "studies": studies, "cxr_studies": len(cxr_studies), "ct_studies": studies - len(cxr_studies),
        "instances": {"total": len(all_uids), "sent": tally.sent, "acknowledged": len(tally.acked),
                      "stored": len(tally.acked & stored), "lost": len(tally.acked - stored),
                      "never_acknowledged": len(all_uids - tally.acked)},
        "jobs": status["jobs"], "outbox": status["outbox"],
        "results": results,
        "wrong_results": wrong_results, "chaos": chaos.log, "longest_outage_seconds": {k: round(v, 1) for k, v in chaos.longest.items()},
        "seconds": round(time.monotonic() - t_start, 1), "work": str(work),
    }
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _dataset_at(pacs: Orthanc, sop: str) -> "pydicom.Dataset":
    (found,) = [m for m in pacs.client.post("/tools/lookup", content=sop).json() if m["Type"] == "Instance"]
    return pacs.get_dicom(found["ID"])


def _referenced(ds: Any, keyword: str) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for item in ds.get(keyword, [])
            for series in item.get("ReferencedSeriesSequence", []) for i in series.get("ReferencedSOPSequence", [])}


def revisions(srs: list[str], sr_of: Callable[[str], Any]) -> int:
    """How many decisions of one study its SRs at the PACS show: 1, or ``len(srs)`` when they form one chain of
    revisions (a late instance re-opened the study): one first SR, each later one naming the previous one as its
    predecessor and having more evidence (the instance that re-opened the study) than it."""
    if len(srs) < 2:
        return 1
    docs = {sop: sr_of(sop) for sop in srs}
    before: dict[str, str] = {}
    for sop, ds in docs.items():
        named = _referenced(ds, "PredecessorDocumentsSequence") & set(docs)
        if len(named) > 1:
            return 1
        if named:
            before[sop] = named.pop()
    roots = [sop for sop in docs if sop not in before]
    if len(roots) != 1 or len(set(before.values())) != len(before):
        return 1  # two first decisions, or two revisions of one SR: a study decided twice
    evidence = {sop: _referenced(ds, "CurrentRequestedProcedureEvidenceSequence") for sop, ds in docs.items()}
    if any(not evidence[prev] < evidence[sop] for sop, prev in before.items()):
        return 1  # a revision without a new instance is a duplicate decision
    return len(srs)


def judge_results(cxr: list[str], others: list[str], received: list[Received],
                  sr_of: Callable[[str], Any]) -> dict[str, Any]:
    """The results at the PACS against what the senders sent: each chest X-ray study exactly one SR and one GSPS
    per decision (:func:`revisions`), every other study none, no study the senders did not send, and every
    instance C-STOREd once. ``received``: every C-STORE the PACS logged; ``sr_of``: an SR's data set at the PACS.

    Returns expected / delivered / missing / extra result counts, ``duplicated`` (instances received more than
    once), ``cstores_max``, ``revised`` (studies legitimately decided again) and ``wrong`` (study UID -> what is
    wrong with its results)."""
    cstores = Counter(r.sop for r in received)
    first: dict[str, Received] = {}
    for r in received:
        first.setdefault(r.sop, r)
    kinds: dict[str, Counter] = {}
    srs: dict[str, list[str]] = {}
    for r in first.values():
        kinds.setdefault(r.study, Counter())[r.modality] += 1
        if r.modality == "SR":
            srs.setdefault(r.study, []).append(r.sop)
    expected = delivered = extra = revised = 0
    wrong: dict[str, str] = {}
    for study in cxr:
        got = kinds.get(study, Counter())
        decisions = revisions(srs.get(study, []), sr_of)
        revised += decisions > 1
        want = Counter({kind: decisions for kind in RESULT_KINDS})
        expected += sum(want.values())
        delivered += sum((got & want).values())
        extra += sum((got - want).values())
        if got != want:
            wrong[study] = f"{dict(sorted(got.items()))} at the PACS, expected {dict(sorted(want.items()))}"
    for study in set(kinds) - set(cxr):
        extra += sum(kinds[study].values())
        wrong[study] = (f"{dict(kinds[study])} at the PACS for a study no rule takes" if study in others
                        else f"{dict(kinds[study])} at the PACS for a study nobody sent")
    return {"expected": expected, "delivered": delivered, "missing": expected - delivered, "extra": extra,
            "cstores_max": max(cstores.values(), default=0),
            "duplicated": sum(1 for n in cstores.values() if n > 1), "revised": revised, "wrong": wrong}


def failed(report: dict[str, Any]) -> list[str]:
    """The reasons the soak failed (empty: nothing lost, nothing duplicated)."""
    why = []
    if report["instances"]["lost"]:
        why.append(f"{report['instances']['lost']} acknowledged instance(s) lost")
    if report["instances"]["never_acknowledged"]:
        why.append(f"{report['instances']['never_acknowledged']} instance(s) never acknowledged in time")
    if report["results"]["missing"]:
        why.append(f"{report['results']['missing']} result(s) not delivered")
    if report["results"]["extra"]:
        why.append(f"{report['results']['extra']} result(s) more than the studies sent call for")
    if report["results"]["duplicated"]:
        why.append(f"{report['results']['duplicated']} result(s) received more than once")
    return why


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=60)
    p.add_argument("--senders", type=int, default=4)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--endpoint-down", type=float, default=60.0, help="seconds of endpoint outage (0: none)")
    p.add_argument("--pacs-down", type=float, default=120.0, help="seconds the PACS is down (0: never)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0, help="the whole run ends by then")
    p.add_argument("--keep", action="store_true", help="keep the work folder (node logs, Orthanc)")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    report = soak(args.studies, senders=args.senders, kills=args.kills, endpoint_down=args.endpoint_down,
                  pacs_down=args.pacs_down, seed=args.seed, settle_timeout=args.timeout, keep=args.keep)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    why = failed(report)
    i, r = report["instances"], report["results"]
    print(f"\nsoak: {report['studies']} studies; instances sent {i['sent']}, acknowledged {i['acknowledged']}, "
          f"stored {i['stored']}; jobs {report['jobs']}; results expected {r['expected']}, delivered "
          f"{r['delivered']}, extra {r['extra']} ({r['revised']} stud(ies) revised by a late instance); C-STOREs per "
          f"result max {r['cstores_max']}; longest outages "
          f"{report['longest_outage_seconds']}; {report['seconds']} s")
    print("FAILED: " + "; ".join(why) if why else "OK: nothing lost, nothing duplicated")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
