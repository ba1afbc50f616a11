"""The Azure DICOM service's change feed as a source: polled, fetched by WADO-RS, into the intake, exactly once.

Against the emulated Azure DICOM service (node/emulator/azure_dicom), which follows Microsoft's v2 API.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from node.config import parse_config
from node.dicomweb import multipart
from node.dicomweb.changefeed import ChangeFeedPoller
from node.emulator.azure_dicom import AzureDicomEmulator
from node.flow.intake import Intake
from node.store import sources
from node.store.spool import Spool
from node.store.state import Store
from support.studies import derive_cxr_study


def stow(url: str, files: list[Path]) -> None:
    body, content_type = multipart.encode(f.read_bytes() for f in files)
    rsp = httpx.post(f"{url}/studies", content=body, headers={"Content-Type": content_type}, timeout=60,
                     trust_env=False)
    assert rsp.status_code == 200, rsp.text


class CountingIntake(Intake):
    """The real intake (no queue: nothing armed), counting what it records."""

    def __init__(self, cfg, store) -> None:
        super().__init__(cfg, store, None)
        self.recorded: list[str] = []

    def record(self, records):
        self.recorded += [r.sop_instance_uid for r in records]
        return super().record(records)


def poller_for(tmp_path: Path, url: str, **src):
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "sources": [{"type": "azure-dicom-changefeed", "name": "azure", "url": url, "batch": 2,
                                     "poll_seconds": 0.2, **src}]})
    store = Store.open(cfg.database_url)
    spool = Spool(cfg.storage_dir)
    spool.create()
    intake = CountingIntake(cfg, store)
    return ChangeFeedPoller(cfg, cfg.sources[0], store, spool, intake), store, intake


def test_new_instances_are_ingested_once_and_deletions_ignored(tmp_path: Path, data: Path) -> None:
    first = derive_cxr_study(tmp_path / "a", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    second = derive_cxr_study(tmp_path / "b", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    with AzureDicomEmulator(tmp_path / "azure") as azure:
        stow(azure.url, first)
        stow(azure.url, second)
        gone = next(iter(azure.archive.find(sop=None)))  # delete one instance of the first study
        deleted = [s for s in azure.archive.find() if s.study == gone.study][0]
        assert azure.archive.delete(deleted.study, deleted.series, deleted.sop) == 1
        poller, store, intake = poller_for(tmp_path, azure.url)
        while poller.poll_once():  # pages of two entries: create, create, create, delete
            pass
        kept = sorted(s.sop for s in azure.archive.find())
        assert sorted(intake.recorded) == kept, "every live instance once; the deleted one never fetched"
        assert deleted.sop not in azure.archive.wado_counts
        for sop in kept:
            held = store.instance(sop)
            assert held is not None and Path(held["path"]).exists() and not held["is_prior"]
        pos = sources.position(store.engine, "azure")
        assert (pos["feed_offset"], pos["last_sequence"], pos["ingested"]) == (4, 4, 2)
        # A restarted poller starts where the database says: nothing again.
        again, _, intake2 = poller_for(tmp_path, azure.url)
        assert again.poll_once() == 0 and intake2.recorded == []
        # A crash after recording and before the position moved: the page is read again, nothing re-ingested.
        third = derive_cxr_study(tmp_path / "c", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
        stow(azure.url, third)
        again.poll_once()
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE source_offsets SET feed_offset=4, last_sequence=4, ingested=2")
        replay, _, intake3 = poller_for(tmp_path, azure.url)
        replay.poll_once()
        assert intake3.recorded == [] and sources.position(store.engine, "azure")["feed_offset"] == 5
        # ...and the instance whose count died with the position still counts once: 3 live instances in all.
        assert sources.position(store.engine, "azure")["ingested"] == 3
        assert max(azure.archive.wado_counts.values()) == 1


def test_a_failing_source_backs_off_and_shows_in_status(tmp_path: Path) -> None:
    with AzureDicomEmulator(tmp_path / "azure") as azure:
        azure.script_faults(503, 2)
        poller, store, _ = poller_for(tmp_path, azure.url, poll_seconds=0.1, backoff_max_seconds=0.3)
        poller.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = sources.position(store.engine, "azure")
                if row["failures"] >= 2:
                    break
                time.sleep(0.05)
            assert row["failures"] >= 2 and "HTTP 503" in row["last_error"] and row["next_poll_at"]
            while time.monotonic() < deadline and sources.position(store.engine, "azure")["failures"]:
                time.sleep(0.05)
            assert sources.position(store.engine, "azure")["failures"] == 0, "recovers once the service answers"
        finally:
            poller.stop()


def test_source_config_is_checked() -> None:
    from node.config import ConfigError

    with pytest.raises(ConfigError, match="sources"):
        parse_config({"sources": [{"type": "gcp-pubsub", "url": "https://x/v2"}]})
    with pytest.raises(ConfigError, match="url"):
        parse_config({"sources": [{"type": "azure-dicom-changefeed"}]})


# --- end to end: dicom-node serve with the emulated Azure DICOM service as source and destination ----------------

def results_by_study(azure: AzureDicomEmulator, own_study_uids: set[str]) -> dict[str, list[str]]:
    """Modalities of the results (SR, PR) the service holds, per study."""
    out: dict[str, list[str]] = {}
    for s in azure.archive.find():
        modality = str(s.header.get("Modality", ""))
        if s.study in own_study_uids and modality in ("SR", "PR"):
            out.setdefault(s.study, []).append(modality)
    return out


@pytest.mark.slow
@pytest.mark.faults
def test_change_feed_end_to_end_with_a_kill_while_consuming(tmp_path: Path, data: Path) -> None:
    """Studies put into the Azure DICOM service get their SR and GSPS back there by STOW-RS, exactly once, even
    though the node is SIGKILLed while it consumes the change feed."""
    import pydicom

    from node.emulator.server import EmulatorServer
    from support.nodekit import db_rows, status_json, wait_until
    from support.nodeproc import NodeProcess, node_config

    studies = [derive_cxr_study(tmp_path / f"s{i}", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                                data / "cxr" / "dx_lateral_thorax_veterinary.dcm") for i in range(4)]
    uids = [str(pydicom.dcmread(s[0], stop_before_pixels=True).StudyInstanceUID) for s in studies]
    with EmulatorServer("127.0.0.1", 0) as model, AzureDicomEmulator(tmp_path / "azure") as azure:
        cfg = node_config(tmp_path, endpoint_url=model.url, pacs=None,
                          sources=[{"type": "azure-dicom-changefeed", "name": "azure", "url": azure.url,
                                    "poll_seconds": 0.3, "batch": 1}])
        cfg["destinations"]["azure"] = {"type": "dicomweb", "url": azure.url, "backoff_initial_seconds": 0.5,
                                        "backoff_max_seconds": 2}
        cfg["rules"][0]["send_to"] = ["azure"]
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            stow(azure.url, studies[0])
            wait_until(lambda: len(results_by_study(azure, {uids[0]}).get(uids[0], [])) >= 2, 120,
                       "the first study's SR and GSPS in the Azure DICOM service")
            for s in studies[1:]:
                stow(azure.url, s)
            wait_until(lambda: db_rows(node, "SELECT ingested FROM source_offsets")[0][0] >= 3, 60,
                       "the node consuming the change feed")
            node.kill()
            node.start()
            wait_until(lambda: all(len(results_by_study(azure, set(uids)).get(u, [])) >= 2 for u in uids), 180,
                       "every study's results in the Azure DICOM service")
            time.sleep(3)  # anything sent twice would arrive now
            status = status_json(node)
        finally:
            node.stop()
        got = results_by_study(azure, set(uids))
        assert {u: sorted(got[u]) for u in uids} == {u: ["PR", "SR"] for u in uids}, "one SR and one GSPS each"
        result_uids = [s.sop for s in azure.archive.find() if s.study in set(uids)
                       and str(s.header.get("Modality")) in ("SR", "PR")]
        assert all(azure.archive.stow_counts[u] == 1 for u in result_uids), "each result sent once"
        jobs = db_rows(node, "SELECT study_uid, COUNT(*) FROM jobs GROUP BY study_uid")
        assert sorted(jobs) == sorted((u, 1) for u in uids), "each study processed once"
        source_sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for s in studies for f in s}
        held = {r[0] for r in db_rows(node, "SELECT sop_instance_uid FROM instances")}
        assert held == source_sops, "every instance of the feed ingested; the node's own results not taken back"
        (row,) = status["sources"]
        assert row["failures"] == 0 and row["ingested"] == len(source_sops)
        assert row["feed_offset"] == len(azure.archive.feed)
