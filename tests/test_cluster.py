"""A cluster: two ``dicom-node serve`` processes on one PostgreSQL, one Redis and one storage folder, behind HAProxy.

* a study whose instances arrive on different nodes is one study: one decision, one job per rule, each result
  C-STOREd once (counted at dcmtk ``storescp +uf``, one file per C-STORE);
* nodes sharing the storage folder keep their own files apart (metrics samples, worker pid file, audit trail):
  starting the second node leaves the first one's alone, and each node's ``/readyz`` names its own worker.

Fail-over (a node SIGKILLed while it holds work in every state) is in test_cluster_failover.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from support.cluster import Cluster
from support.dcmtk import Storescp, storescu, transfer_syntax_flag
from support.nodekit import wait_until
from support.studies import derive_cxr_study

pytestmark = [pytest.mark.slow]


def _send(host_port: int, files: list[Path]) -> None:
    for f in files:
        proc = storescu("127.0.0.1", host_port, [f], extra=[transfer_syntax_flag(f)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10)
    except httpx.TransportError:
        return None


def test_a_study_split_across_two_nodes_is_one_study_sent_once(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    frontal, lateral = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                                        data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    with EmulatorServer("127.0.0.1", 0) as emulator, Storescp(tmp_path / "pacs") as pacs, \
            Cluster(tmp_path, size=2, endpoint_url=emulator.url, pacs=(pacs.ae_title, pacs.port),
                    quiet=2.0) as cluster:
        a, b = cluster.nodes
        _send(a.port, [frontal])
        _send(b.port, [lateral])
        wait_until(lambda: cluster.status()["outbox"] == {"delivered": 2}, 120,
                   f"both results delivered\n{cluster.logs()[-4000:]}")
        time.sleep(2)  # a second C-STORE, if any, would land now
        counts = pacs.counts()
        studies = cluster.sql("SELECT study_uid, state, version FROM studies")
        jobs = cluster.sql("SELECT study_uid, rule_name, state FROM jobs")
        instances = cluster.sql("SELECT count(*) FROM instances")
        models_called = len(emulator.requests)
    assert len(studies) == 1 and studies[0][1:] == ["done", "1"], studies
    assert jobs == [[studies[0][0], "chest-xray-findings", "done"]], jobs
    assert instances == [["2"]]
    assert models_called == 1
    assert len(counts) == 2 and set(counts.values()) == {1}, counts


def test_nodes_sharing_storage_keep_their_own_files(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    with EmulatorServer("127.0.0.1", 0) as emulator, \
            Cluster(tmp_path, size=2, endpoint_url=emulator.url, pacs=None) as cluster:
        a, b = cluster.nodes
        own = {n.config["node"]["instance_id"]: cluster.shared / "nodes" / n.config["node"]["instance_id"]
               for n in cluster.nodes}
        for node, folder in zip(cluster.nodes, own.values()):
            pid = int((folder / "worker.pid").read_text())
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid == node.proc.pid, "each node's worker.pid names its own worker"
            assert any((folder / "metrics").iterdir()), "each node's metrics samples live in its own folder"
            ready = wait_until(lambda: _get(f"http://127.0.0.1:{node.config['http']['port']}/readyz"), 60,
                               "the HTTP side")
            assert ready.status_code == 200 and str(pid) in ready.text, ready.text
        # instances through the balancer land on both nodes (leastconn: idle nodes take turns) and are audited by the
        # node that got them
        files = derive_cxr_study(tmp_path / "s", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                                 data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
        _send(cluster.port, files)
        audited = {}
        for name, folder in own.items():
            lines = (folder / "audit.jsonl").read_text().splitlines() if (folder / "audit.jsonl").exists() else []
            audited[name] = sum(1 for line in lines if json.loads(line)["event"] == "instance-received")
    assert not (cluster.shared / "worker.pid").exists() and not (cluster.shared / "metrics").exists()
    assert sorted(audited.values()) == [1, 1], audited
