"""Receive: the Storage SCP against dcmtk's storescu and echoscu (real peers, loopback, free ports)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from support.dcmtk import echoscu, storescu, transfer_syntax_flag
from node.config import parse_config
from support.ports import free_port
from node.dicom.scp import StorageSCP
from node.flow.intake import Intake
from node.store.spool import Spool
from node.store.state import Store


class RecordingIntake(Intake):
    """The node's intake, recording the checks it arms instead of running them (no queue here)."""

    def __init__(self, cfg, store: Store, scheduled: list[tuple[str, float]]) -> None:
        super().__init__(cfg, store, queue=None)  # type: ignore[arg-type]
        self.scheduled = scheduled

    def arm(self, study_uid: str, due_at: float) -> None:
        self.scheduled.append((study_uid, due_at))


class Harness:
    def __init__(self, tmp: Path, **node_overrides) -> None:
        node = {"ae_title": "AINODE", "host": "127.0.0.1", "port": free_port(), "storage_dir": str(tmp / "var"),
                "study_complete_after_seconds": 5, "min_free_disk_mb": 0}
        node.update(node_overrides)
        self.cfg = parse_config({"node": node})
        self.spool = Spool(self.cfg.storage_dir, min_free_bytes=self.cfg.node.min_free_disk_mb * 1024 * 1024)
        self.spool.create()
        self.store = Store.open(self.cfg.database_url)
        self.scheduled: list[tuple[str, float]] = []
        self.scp = StorageSCP(self.cfg, self.store, self.spool, RecordingIntake(self.cfg, self.store, self.scheduled))

    def __enter__(self) -> "Harness":
        self.scp.start()
        return self

    def __exit__(self, *exc) -> None:
        self.scp.stop(drain_seconds=5)
        self.store.engine.dispose()

    @property
    def port(self) -> int:
        return self.cfg.node.port

    def send(self, files, **kw):
        return storescu("127.0.0.1", self.port, files, **kw)


def _count_rows(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def test_echo_and_store_every_transfer_syntax(tmp_path: Path, data: Path) -> None:
    with Harness(tmp_path) as h:
        assert echoscu("127.0.0.1", h.port, "AINODE").returncode == 0
        files = sorted((data / "compressed").glob("*.dcm")) + [data / "cxr" / "cr_pa_jpeg_baseline.dcm"]
        for f in files:
            proc = h.send([f], extra=[transfer_syntax_flag(f)])
            assert proc.returncode == 0, proc.stderr
        rows = h.store.study_instances(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        assert rows, "nothing recorded"
        # Every instance is in the spool, byte-identical in its data set, in the transfer syntax it was sent in.
        total = 0
        for f in files:
            src = pydicom.dcmread(f)
            uid = src.SOPInstanceUID
            dst = h.spool.instance_path(src.StudyInstanceUID, src.SeriesInstanceUID, uid)
            got = pydicom.dcmread(dst)
            assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
            assert got.PixelData == src.PixelData
            total += 1
        assert _count_rows(h.store, "instances") == len({pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                                                         for f in files})
        assert h.scheduled, "the quiet-timer check of the new study was not scheduled"
        # only the empty files made ahead for the next instances (node.dicom.spare_files) may be there
        assert not [p for p in h.spool.tmp.iterdir() if not p.name.startswith("spare-")], \
            "temporary receive files were left behind"


def test_resend_replaces_and_never_duplicates(tmp_path: Path, data: Path) -> None:
    f = data / "cxr" / "cr_pa_jpeg_baseline.dcm"
    with Harness(tmp_path) as h:
        for _ in range(3):
            assert h.send([f], extra=["-xy"]).returncode == 0
        assert _count_rows(h.store, "instances") == 1
        assert _count_rows(h.store, "studies") == 1
        assert len(h.scheduled) == 1  # one pending check per study, not one per instance


def test_unparseable_instance_is_quarantined_and_the_rest_goes_on(tmp_path: Path, data: Path) -> None:
    good = data / "compressed" / "CT1_UNC.dcm"
    broken = tmp_path / "no_uids.dcm"
    ds = pydicom.dcmread(good)
    ds.StudyInstanceUID = ""  # a real-world defect: empty UIDs
    ds.save_as(broken, enforce_file_format=True)
    with Harness(tmp_path) as h:
        bad_proc = h.send([broken], extra=["-v"])
        good_proc = h.send([good])
        assert good_proc.returncode == 0
        assert "error: cannotunderstand" in (bad_proc.stdout + bad_proc.stderr).lower(), bad_proc.stdout
        kept = list(h.spool.quarantine_dir.glob("*.dcm"))
        reasons = list(h.spool.quarantine_dir.glob("*.reason.txt"))
        assert len(kept) == 1 and len(reasons) == 1
        assert "StudyInstanceUID" in reasons[0].read_text()
        assert _count_rows(h.store, "quarantine") == 1
        assert _count_rows(h.store, "instances") == 1


def test_calling_ae_not_allowed_is_rejected(tmp_path: Path, data: Path) -> None:
    f = data / "compressed" / "CT1_UNC.dcm"
    with Harness(tmp_path, allowed_calling_ae_titles=["MODALITY1"]) as h:
        refused = h.send([f], calling_ae="INTRUDER")
        assert refused.returncode != 0
        assert _count_rows(h.store, "instances") == 0
        assert h.send([f], calling_ae="MODALITY1").returncode == 0
        assert _count_rows(h.store, "instances") == 1


def test_full_disk_answers_out_of_resources(tmp_path: Path, data: Path) -> None:
    f = data / "compressed" / "CT1_UNC.dcm"
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    with Harness(tmp_path, min_free_disk_mb=free_mb + 1024) as h:
        proc = h.send([f], extra=["-v"])
        assert "refused: outofresources" in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
        assert _count_rows(h.store, "instances") == 0
        assert not list(h.spool.instances.rglob("*.dcm"))


def test_late_instance_reopens_a_decided_study(tmp_path: Path, data: Path) -> None:
    f = data / "compressed" / "CT1_UNC.dcm"
    with Harness(tmp_path, study_complete_after_seconds=0.01) as h:
        assert h.send([f]).returncode == 0
        study = pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
        assert h.store.begin_decision(study, 0.0)[0] == "complete"
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = generate_uid()
        late = tmp_path / "late.dcm"
        ds.save_as(late, enforce_file_format=True)
        assert h.send([late]).returncode == 0
        row = h.store.study(study)
        assert row["state"] == "receiving" and row["version"] == 1
        assert "re-opened" in row["note"]


def test_parallel_associations_delivering_one_study(tmp_path: Path, data: Path) -> None:
    """A PACS often sends one study over several associations at once: every instance is stored, one study row."""
    import concurrent.futures

    src = pydicom.dcmread(data / "compressed" / "CT1_UNC.dcm")
    folders = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        for i in range(8):
            src.SOPInstanceUID = generate_uid()
            src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
            src.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        folders.append(folder)
    with Harness(tmp_path) as h:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            procs = list(pool.map(lambda f: h.send([f]), folders))
        assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
        assert _count_rows(h.store, "instances") == 32
        assert _count_rows(h.store, "studies") == 1
        assert len(h.scheduled) == 1
