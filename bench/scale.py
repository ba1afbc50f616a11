"""Scale: a cluster of 1, 2 and 3 nodes on one PostgreSQL + Redis + storage folder, behind HAProxy, next to the
same number of Orthanc servers on one PostgreSQL (Debian ``orthanc-postgresql``) behind the same HAProxy.

Rows (``python -m bench scale``; left out of ``all``: it starts a database, a queue, a balancer and up to three
nodes per size and takes minutes):

* ``instances/s, N nodes``: 6 concurrent storescu senders push copies of the 64-slice CT through the balancer;
  reference: N Orthanc servers sharing one PostgreSQL index (``Lock: false``) and one storage folder, same senders;
* ``studies/hour, N nodes``: 6 senders each send chest X-ray studies (2 instances) through the balancer; the figure
  is studies until every result is C-STOREd at a dcmtk storescp, quiet time and model call (the local emulator,
  which answers at once: real endpoints take seconds) included; reference: the 1-node figure (the scaling);
* ``DB ms/instance``: ``Store.record_instances`` of one instance at a time on PostgreSQL vs the default SQLite
  (FULL sync), in this process: the database cost the receive path pays per acknowledged instance;
* ``CPU ms/instance`` per component during the N-node ingest (node processes, PostgreSQL, HAProxy) and, with
  py-spy installed, the node functions that took the most samples: what bounds it.

The machine is shared and small (2 cores here): figures are noisy, and the nodes compete with the senders,
PostgreSQL and each other for the same cores, so more nodes on one machine cannot show the scaling more machines
would. Each figure is one run per size (``--quick``: smaller), not a median.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .common import DATA, dcmtk_env, push, repeated_ct, row, split

GROUP = "scale"
SENDERS = 6
PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
CLK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(roots: Sequence[int]) -> float:
    """CPU seconds (user + system) of the processes ``roots`` and all their descendants, alive now."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    keep = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                grew = True
    return sum(ticks.get(pid, 0) for pid in keep) / CLK


def _postmaster(pg: Any) -> int:
    return int((pg.datadir / "postmaster.pid").read_text().splitlines()[0])


class _CpuMeter:
    """CPU seconds per component between :meth:`start` and :meth:`stop`."""

    def __init__(self, components: dict[str, list[int]]) -> None:
        self.components = components
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {k: _tree_cpu(v) for k, v in self.components.items()}

    def stop(self) -> dict[str, float]:
        return {k: _tree_cpu(v) - self.before[k] for k, v in self.components.items()}


def _orthanc_cluster(base: Path, size: int, files: list[Path]) -> tuple[float, dict[str, float]]:
    """Instances/s of ``size`` Orthanc servers on one PostgreSQL index behind HAProxy; CPU s per component."""
    from support.haproxy import HAProxy
    from support.orthanc import Orthanc
    from support.postgres import PostgresServer

    if not Path(PG_PLUGIN).exists():
        raise RuntimeError("Orthanc's PostgreSQL plugin is missing: run scripts/setup.sh (orthanc-postgresql)")
    pg = PostgresServer().start()
    servers: list[Orthanc] = []
    balancer = None
    try:
        url = pg.create_database()
        name = url.rsplit("/", 1)[1]
        storage = base / "orthanc-storage"

        class OrthancOnPostgres(Orthanc):
            def config(self) -> dict:
                cfg = super().config()
                cfg["Plugins"] = [PG_PLUGIN]
                cfg["StorageDirectory"] = str(storage)
                cfg["PostgreSQL"] = {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1",
                                     "Port": pg.port, "Database": name, "Username": "postgres", "Password": "",
                                     "Lock": False}
                return cfg

        for i in range(size):  # one after the other: the first creates the schema
            servers.append(OrthancOnPostgres(base / f"orthanc{i}").start())
        balancer = HAProxy(base / "haproxy-orthanc", [("127.0.0.1", o.dicom_port) for o in servers]).start()
        meter = _CpuMeter({"orthanc": [o.process.pid for o in servers if o.process],
                           "postgres": [_postmaster(pg)], "haproxy": [balancer.proc.pid]})
        meter.start()
        elapsed = push(balancer.port, split(files, SENDERS), "ORTHANC", nodelay=True)
        return len(files) / elapsed, meter.stop()
    finally:
        if balancer is not None:
            balancer.stop()
        for o in servers:
            o.stop()
        pg.stop()


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy sampling the node ``pid`` and its children for ``seconds`` (raw folded stacks), when installed."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "--subprocesses", "-d", str(max(1, int(seconds))),
                             "-r", "50", "-f", "raw", "-o", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _top_frames(folded: Path, n: int = 6) -> str:
    """The leaf functions with the most samples in py-spy's folded stacks: ``name share%`` each."""
    if not folded.exists():
        return "no profile"
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frame = stack.split(";")[-1]
        name = frame.split(" (")[0]
        where = frame.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] if " (" in frame else ""
        leaf[f"{name} ({where})"] += int(count)
        total += int(count)
    if not total:
        return "no samples"
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in leaf.most_common(n))


def _node_cluster(base: Path, size: int, ct: list[Path], studies: list[list[Path]], profile: bool
                  ) -> dict[str, Any]:
    """Ingest and end-to-end figures of a ``size``-node cluster (fresh database, queue and storage)."""
    from node.emulator.server import EmulatorServer
    from support.cluster import Cluster
    from support.dcmtk import Storescp

    out: dict[str, Any] = {}
    # --fork: one process per association, so that the nodes' concurrent sends do not queue behind each other
    # at the PACS past the destination's 30 s timeout (then resent: no verification is configured here)
    with EmulatorServer("127.0.0.1", 0) as emulator, Storescp(base / "pacs", extra=["--fork"]) as pacs, \
            Cluster(base, size=size, endpoint_url=emulator.url, pacs=(pacs.ae_title, pacs.port), quiet=1.0,
                    lease_seconds=20.0, http=False) as cluster:
        for n in cluster.nodes:
            n.wait_worker_started()  # their imports would share the CPUs with the measurement
        meter = _CpuMeter({"node": [n.proc.pid for n in cluster.nodes if n.proc],
                           "postgres": [_postmaster(cluster.pg)], "haproxy": [cluster.balancer.proc.pid]})
        spy = _profile(cluster.nodes[0].proc.pid, 8, base / "pyspy.txt") if profile else None
        meter.start()
        elapsed = push(cluster.port, split(ct, SENDERS), "AINODE", nodelay=True)
        out["ingest_per_s"] = len(ct) / elapsed
        out["cpu"] = meter.stop()
        if spy is not None:
            spy.wait(timeout=60)
            out["profile"] = _top_frames(base / "pyspy.txt")
        # end to end: each sender sends its studies one after the other, the senders at once
        expected = 2 * len(studies)  # two results (SR + presentation state) per two-view chest X-ray study
        t0 = time.perf_counter()
        senders = [subprocess.Popen(_send_studies_cmd(cluster.port, studies[i::SENDERS]), env=dcmtk_env(True),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(SENDERS)]
        for p in senders:
            if p.wait(timeout=600) != 0:
                raise RuntimeError("a study sender failed")
        deadline = time.monotonic() + 600
        while True:
            done = int(cluster.sql("SELECT count(*) FROM outbox WHERE state = 'delivered'")[0][0])
            if done >= expected:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {expected} results delivered:\n{cluster.logs()[-3000:]}")
            time.sleep(0.2)
        out["studies_per_hour"] = len(studies) / (time.perf_counter() - t0) * 3600
        counts = pacs.counts()
        out["duplicates"] = sum(v - 1 for v in counts.values())
    return out


def _send_studies_cmd(port: int, studies: list[list[Path]]) -> list[str]:
    import shlex

    from support.dcmtk import transfer_syntax_flag

    from .common import tool

    # a modality sending its studies one after the other, one association per instance (its own transfer syntax)
    lines = [shlex.join([tool("storescu"), "-aet", "BENCH", "-aec", "AINODE", transfer_syntax_flag(f), "127.0.0.1",
                         str(port), str(f)]) for files in studies for f in files]
    return ["/bin/sh", "-ec", " && ".join(lines) if lines else "true"]


def _db_cost(base: Path, n: int) -> dict[str, float]:
    """Milliseconds per ``record_instances`` of one instance, PostgreSQL vs SQLite (median of ``n``)."""
    import statistics

    from pydicom.uid import generate_uid

    from node.store.records import InstanceRecord
    from node.store.state import Store
    from support.postgres import PostgresServer

    pg = PostgresServer().start()
    try:
        urls = {"postgresql": pg.create_database(), "sqlite": f"sqlite:///{base / 'cost.db'}"}
        out: dict[str, float] = {}
        for name, url in urls.items():
            store = Store.open(url)
            study, series = generate_uid(), generate_uid()
            times = []
            for _ in range(n):
                sop = generate_uid()
                rec = InstanceRecord(sop_instance_uid=sop, study_uid=study, series_uid=series,
                                     sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                                     path=str(base / f"{sop}.dcm"), size_bytes=1, calling_ae="BENCH")
                t0 = time.perf_counter()
                store.record_instances([rec], 600.0)
                times.append(time.perf_counter() - t0)
            store.engine.dispose()
            out[name] = statistics.median(times) * 1000
        return out
    finally:
        pg.stop()


def _cxr_studies(base: Path, count: int) -> list[list[Path]]:
    from support.studies import derive_cxr_study

    return [derive_cxr_study(base / f"s{i:03d}", DATA / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             DATA / "cxr" / "dx_lateral_thorax_veterinary.dcm", patient_id=f"SCALE-{i:03d}")
            for i in range(count)]


def run(quick: bool) -> list[dict[str, Any]]:
    """Every row of the scale benchmark (module docstring)."""
    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[dict[str, Any]] = []
    try:
        ct = repeated_ct(base / "ct", 3 if quick else 10)
        studies = _cxr_studies(base / "cxr", SENDERS if quick else 4 * SENDERS)
        sizes = (1, 2) if quick else (1, 2, 3)
        one_node_rate = None
        for size in sizes:
            ref_rate, ref_cpu = _orthanc_cluster(base / f"o{size}", size, ct)
            got = _node_cluster(base / f"n{size}", size, ct, studies, profile=(size == 1))
            n = len(ct)
            cpu = ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in got["cpu"].items())
            ref = ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in ref_cpu.items())
            rows.append(row(GROUP, f"instances/s, {size} node(s), {SENDERS} senders via HAProxy, PostgreSQL",
                            got["ingest_per_s"], "inst/s", reference=f"Orthanc x{size}, same PostgreSQL",
                            ref_value=ref_rate, note=f"{n} CT instances; CPU ms/instance: node: {cpu}; "
                                                     f"Orthanc: {ref}"))
            if one_node_rate is None:
                one_node_rate = got["studies_per_hour"]
            rows.append(row(GROUP, f"studies/hour, {size} node(s), end to end", got["studies_per_hour"],
                            "studies/h", reference="1 node", ref_value=one_node_rate,
                            note=f"{len(studies)} CXR studies (2 instances, 2 results each), quiet 1 s, emulator; "
                                 f"duplicate C-STOREs: {got['duplicates']} (no verification configured: a "
                                 "C-STORE that timed out is sent again, see docs/delivery.md)"))
            if "profile" in got:
                rows.append(row(GROUP, "where node 0 spends its time (py-spy wall samples, all threads, 1-node "
                                       "ingest)", None, "", note=got["profile"]))
        cost = _db_cost(base, 50 if quick else 300)
        rows.append(row(GROUP, "DB ms per acknowledged instance (record_instances, 1 per commit)",
                        cost["postgresql"], "ms", reference="SQLite FULL", ref_value=cost["sqlite"],
                        note="PostgreSQL fsync on, loopback TCP", higher_is_better=False))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return rows
