"""`dicom-node rules test` on the shared data: the expected matches come from the headers read here with pydicom
(plain equality on Modality / BodyPartExamined), never from node.flow.decide; nothing reaches any endpoint or PACS.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import yaml

from support.ports import free_port
from support.studies import derive_cxr_study


class Listener:
    """A TCP port that counts the connections made to it (an endpoint or a PACS that must never be called)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def write_config(tmp: Path, endpoint_port: int, pacs_port: int) -> Path:
    url = f"http://127.0.0.1:{endpoint_port}/score"
    cfg = {
        "node": {"ae_title": "AINODE", "host": "127.0.0.1", "port": free_port(), "storage_dir": str(tmp / "var")},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": url, "auth": "none"},
                      "parse3d": {"model": "medimageparse3d", "url": url, "auth": "none"},
                      "parse": {"model": "medimageparse", "url": url, "auth": "none"}},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "rules": [
            {"name": "chest", "match": {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST"},
             "endpoint": "cxr", "send_to": ["pacs"]},
            {"name": "ct-volume", "match": {"Modality": "CT"}, "endpoint": "parse3d", "send_to": ["pacs"],
             "params": {"prompt": "liver"}},
            {"name": "mr-slices", "match": {"Modality": "MR"}, "endpoint": "parse", "send_to": ["pacs"],
             "params": {"prompt": "prostate", "frames": "middle"}},
        ],
    }
    path = tmp / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "rules", "test", *args], capture_output=True,
                          text=True, timeout=300)


def headers_by_series(folders: list[Path]) -> dict[str, list[pydicom.Dataset]]:
    """Every readable file with non-empty UIDs, by Series Instance UID (independently of the node)."""
    out: dict[str, list[pydicom.Dataset]] = {}
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if all(str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
                out.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return out


def test_rules_test_on_the_shared_data(tmp_path: Path, data: Path) -> None:
    endpoint, pacs = Listener(), Listener()
    try:
        config = write_config(tmp_path, endpoint.port, pacs.port)
        folders = [data / "cxr", data / "ct", data / "mr", data / "other"]
        out = run_cli("--config", str(config), "--json", *map(str, folders))
        text = run_cli("--config", str(config), str(data / "cxr"))
    finally:
        endpoint.close()
        pacs.close()
    assert out.returncode == 0, out.stderr
    assert endpoint.connections == 0 and pacs.connections == 0, "the rule tester must send nothing"
    report = json.loads(out.stdout)
    expected_series = headers_by_series(folders)

    seen = {s["series_uid"]: (study["study_uid"], s) for study in report["studies"] for s in study["series"]}
    assert set(seen) == set(expected_series)
    for uid, items in expected_series.items():
        study_uid, series = seen[uid]
        assert study_uid == str(items[0].StudyInstanceUID)
        assert series["instances"] == len({str(ds.SOPInstanceUID) for ds in items})
        verdict = {r["rule"]: r for r in series["rules"]}
        modalities = {str(ds.get("Modality", "")) for ds in items}
        chest = any(str(ds.get("Modality", "")) in ("CR", "DX") and str(ds.get("BodyPartExamined", "")) == "CHEST"
                    for ds in items)
        assert verdict["chest"]["matches"] is chest, uid
        assert verdict["ct-volume"]["matches"] is ("CT" in modalities), uid
        assert verdict["mr-slices"]["matches"] is ("MR" in modalities), uid
        if "CT" not in modalities:  # the failed key is Modality, with the value the header holds
            failed = verdict["ct-volume"]["failed"]
            assert failed[0]["key"] == "Modality"
            assert {f["found"] for f in failed} <= {m or "absent or empty" for m in modalities}
        if not chest and modalities <= {"CR", "DX"}:
            failed = verdict["chest"]["failed"]
            assert failed[0]["key"] == "BodyPartExamined"
            assert failed[0]["found"] in {str(ds.get("BodyPartExamined", "")) or "absent or empty" for ds in items}

    # the CT whose UIDs are empty is refused, as the SCP quarantines it
    empty = sorted((data / "ct" / "ct_j2k_20slices_empty_uids").glob("*"))
    refused = {r["path"] for r in report["refused"]}
    assert {str(p) for p in empty if p.is_file()} <= refused

    jobs = {(study["study_uid"], job["rule"]): job for study in report["studies"] for job in study["jobs"]}
    ct = pydicom.dcmread(next((data / "ct" / "chest_ct_5mm_64slices").glob("*.dcm")), stop_before_pixels=True)
    volume = jobs[(str(ct.StudyInstanceUID), "ct-volume")]
    assert volume["selection"]["volumes"] == [{"series_uid": str(ct.SeriesInstanceUID), "slices": 64}]
    assert volume["send_to"] == [{"destination": "pacs", "type": "dimse", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": volume["send_to"][0]["port"], "url": None, "tls": False,
                                  "results": ["sr", "gsps", "seg"]}]
    adc = sorted((data / "mr" / "prostate_adc_20slices").glob("*"))
    adc_headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in adc]
    by_number = sorted(adc_headers, key=lambda ds: int(ds.InstanceNumber))
    middle = by_number[(len(by_number) - 1) // 2]  # frames: middle = index (n-1)//2 by InstanceNumber
    mr_job = jobs[(str(middle.StudyInstanceUID), "mr-slices")]
    assert [f["sop_instance_uid"] for f in mr_job["selection"]["frames"]] == [str(middle.SOPInstanceUID)]

    assert text.returncode == 0, text.stderr
    assert "MATCHES" in text.stdout and "no match: BodyPartExamined is 'THORAX'" in text.stdout
    assert "sent: nothing" in text.stdout


def test_rules_test_shows_the_chest_views_chosen(tmp_path: Path, data: Path) -> None:
    """A PA + lateral study derived from the real images: the frontal is the PA, the lateral the LL, with why."""
    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    config = write_config(tmp_path, free_port(), free_port())
    out = run_cli("--config", str(config), "--json", str(tmp_path / "study"))
    assert out.returncode == 0, out.stderr
    (study_report,) = json.loads(out.stdout)["studies"]
    (job,) = [j for j in study_report["jobs"] if j["rule"] == "chest"]
    assert job["selection"]["frontal"] == str(study[0])
    assert job["selection"]["lateral"] == str(study[1])
    assert "ViewPosition=PA" in job["selection"]["frontal_why"]
    assert "LL" in job["selection"]["lateral_why"]
    # the rule gives no params: the CXRReportGen defaults documented in config/example.yaml
    assert job["params"] == {"allow_burned_in": False, "max_side": None, "view_label_set": "view"}


def test_rules_test_names_a_missing_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), free_port())
    out = run_cli("--config", str(config), str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "nowhere" in out.stderr
