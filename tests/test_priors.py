"""Priors: the patient's previous chest X-ray and its report, fetched from a real Orthanc for CXRReportGen.

The prior studies are derived from real images (``priorstudy.py``: new UIDs, same patient, earlier StudyDate,
a radiologist's final SR and this node's own earlier SR). End to end: dcmtk storescu -> dicom-node serve ->
C-FIND/C-MOVE (or C-GET) against Orthanc -> emulator -> SR and GSPS back to Orthanc.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from support.nodekit import send
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import (CURRENT_DATE, OWN_FINDING, PRIOR_DATE, RADIOLOGIST_FINDINGS, RADIOLOGIST_IMPRESSION,
                             derive_cxr_study, make_prior_study)
from support.validate import assert_valid_dicom
from support.testdb import database_url


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- fast: report text, configuration, bookkeeping -------------------------------------------------------

def test_report_text_of_a_radiologist_sr_and_of_the_nodes_own_sr(tmp_path: Path, data: Path) -> None:
    from converters.sr_text import is_text_sr, report_text

    prior = make_prior_study(tmp_path, data)
    radiologist = pydicom.dcmread(prior.radiologist_sr)
    own = pydicom.dcmread(prior.own_sr)
    assert is_text_sr(radiologist) and is_text_sr(own)
    assert report_text(radiologist) == (f"Findings: {RADIOLOGIST_FINDINGS}\nImpressions: {RADIOLOGIST_IMPRESSION}")
    assert report_text(own) == OWN_FINDING  # the structural TID 1500 containers are not headings
    assert report_text(pydicom.dcmread(prior.frontal, stop_before_pixels=True)) == ""
    for path in (prior.radiologist_sr, prior.own_sr):
        assert_valid_dicom(path)


def test_priors_query_must_name_a_destination(tmp_path: Path) -> None:
    from node.config import ConfigError, load_config

    f = tmp_path / "node.yaml"
    f.write_text("priors: {query: nowhere, method: c-move}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "priors.query" in str(err.value) and "nowhere" in str(err.value)
    f.write_text("destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}}\n"
                 "priors: {query: pacs, method: c-find}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert "priors.method" in str(err.value) and "c-get" in str(err.value)
    f.write_text("destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}}\n"
                 "priors: {query: pacs, method: c-get, lookback_days: 30, timeout_seconds: 5, report_text_dir: rep}\n")
    cfg = load_config(f)
    assert cfg.priors is not None and cfg.priors.method == "c-get" and cfg.priors.modalities == ["CR", "DX"]
    assert cfg.priors.report_text_dir == (tmp_path / "rep").resolve()


def test_instances_of_an_expected_prior_are_kept_apart_and_purged(tmp_path: Path) -> None:
    from node.store.state import InstanceRecord, Store

    store = Store.open(database_url(tmp_path))

    def rec(study: str, sop: str) -> InstanceRecord:
        path = tmp_path / f"{sop}.dcm"
        path.write_bytes(b"x")
        return InstanceRecord(sop_instance_uid=sop, study_uid=study, series_uid=f"{study}.1", sop_class_uid="1.2",
                              transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(path), size_bytes=1,
                              calling_ae="ORTHANC")

    assert store.record_instances([rec("1.2.3", "1.2.3.1.1")], 10.0) == [("1.2.3", pytest.approx(time.time() + 10, abs=5))]
    lookup = store.start_prior_lookup("1.2.3")
    store.expect_prior(lookup, "1.2.9")
    assert store.record_instances([rec("1.2.9", "1.2.9.1.1")], 10.0) == [], "a prior schedules no rule check"
    prior = store.study("1.2.9")
    assert prior["is_prior"] and prior["state"] == "done" and prior["check_due_at"] is None
    assert store.study_instances("1.2.9") == [] and len(store.study_instances("1.2.9", include_priors=True)) == 1
    store.finish_prior_lookup(lookup, "found", "prior study 1.2.9", 0.5)
    # A study the node received as its own work stays its own work when a lookup names it as a prior.
    store.expect_prior(store.start_prior_lookup("1.2.4"), "1.2.3")
    store.record_instances([rec("1.2.3", "1.2.3.1.1")], 10.0)
    assert not store.study("1.2.3")["is_prior"] and store.study("1.2.3")["state"] == "receiving"
    assert len(store.study_instances("1.2.3")) == 1
    assert store.summary()["priors"][-1]["state"] == "found"
    # Retention: the prior study is finished work with nothing to deliver.
    assert store.purge_delivered(0) == 1
    assert store.study("1.2.9") is None and not (tmp_path / "1.2.9.1.1.dcm").exists()
    assert store.study("1.2.3") is not None


def test_report_choice_and_the_configured_text_sources(tmp_path: Path, data: Path) -> None:
    """A radiologist's final SR wins over the node's own; without an SR, report_text_dir, then the attributes."""
    from node.config import parse_config
    from node.models.cxrreportgen.priors import PriorFetcher
    from node.store.spool import Spool
    from node.store.state import Store

    prior = make_prior_study(tmp_path / "prior", data)
    reports = tmp_path / "reports"
    reports.mkdir()
    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
                        "priors": {"query": "pacs", "report_text_dir": str(reports),
                                   "report_text_attributes": ["ImageComments", "StudyComments"]}})
    fetcher = PriorFetcher(cfg, Store.open(cfg.database_url), Spool(cfg.storage_dir))
    radiologist = f"Findings: {RADIOLOGIST_FINDINGS}\nImpressions: {RADIOLOGIST_IMPRESSION}"
    for order in ([prior.own_sr, prior.radiologist_sr], [prior.radiologist_sr, prior.own_sr]):
        assert fetcher._report(prior.study_uid, prior.frontal, order) == (radiologist, "a radiologist's final SR")
    assert fetcher._report(prior.study_uid, prior.frontal, [prior.own_sr]) == (OWN_FINDING, "this node's earlier SR")
    draft = pydicom.dcmread(prior.radiologist_sr)
    draft.VerificationFlag = "UNVERIFIED"
    draft.save_as(tmp_path / "draft.dcm")
    assert fetcher._report(prior.study_uid, prior.frontal, [prior.own_sr, tmp_path / "draft.dcm"])[1] == \
        "a radiologist's SR (not final)"
    # No SR: the study's exported report, then the image's own attributes, then nothing.
    assert fetcher._report(prior.study_uid, prior.frontal, []) == (None, None)
    image = pydicom.dcmread(prior.frontal)
    image.StudyComments = "Report: stable chest."
    image.save_as(prior.frontal)
    assert fetcher._report(prior.study_uid, prior.frontal, []) == ("Report: stable chest.",
                                                                    "the prior image's StudyComments")
    (reports / f"{prior.study_uid}.txt").write_text("Exported report text.\n")
    assert fetcher._report(prior.study_uid, prior.frontal, []) == ("Exported report text.", "report_text_dir")


def fetcher_for(tmp_path: Path, port: int, **priors) -> "PriorFetcher":  # noqa: F821
    from node.config import parse_config
    from node.models.cxrreportgen.priors import PriorFetcher
    from node.store.spool import Spool
    from node.store.state import Store

    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": port}},
                        "priors": {"query": "pacs", **priors}})
    spool = Spool(cfg.storage_dir)
    spool.create()
    return PriorFetcher(cfg, Store.open(cfg.database_url), spool)


def test_a_pacs_that_accepts_and_then_stalls_a_query_costs_the_timeout_only(tmp_path: Path, data: Path) -> None:
    """A real Q/R SCP (pynetdicom) that accepts the association and never answers the C-FIND."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    release = threading.Event()

    def stall(event):
        release.wait(30)
        yield 0x0000, None

    scp = AE(ae_title="STALL")
    scp.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, stall)])
    try:
        fetcher = fetcher_for(tmp_path, server.server_address[1], timeout_seconds=2)
        (frontal,) = derive_cxr_study(tmp_path / "cur", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
        t0 = time.monotonic()
        result = fetcher.fetch(pydicom.dcmread(frontal, stop_before_pixels=True))
        took = time.monotonic() - t0
    finally:
        release.set()
        server.shutdown()
    assert result.state == "timeout" and "did not answer within 2 s" in result.outcome, result
    assert 1.5 <= took <= 4, took
    assert fetcher.store.summary()["priors"][0]["state"] == "timeout"


def test_the_latest_prior_without_a_frontal_gives_way_to_an_older_one(tmp_path: Path, data: Path) -> None:
    """C-GET from a real Orthanc: the 2023 study holds a lateral only, so the 2021 study's frontal is the prior."""
    lateral_only = derive_cxr_study(tmp_path / "lat", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                    frontal_view="LL", study_date="20230601")
    older = make_prior_study(tmp_path / "older", data, study_date="20210301")
    (frontal,) = derive_cxr_study(tmp_path / "cur", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                  study_date=CURRENT_DATE)
    with Orthanc(tmp_path / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", 11112)}) as pacs:
        for f in lateral_only + older.files:
            pacs.upload(f)
        fetcher = fetcher_for(tmp_path, pacs.dicom_port, method="c-get")
        result = fetcher.fetch(pydicom.dcmread(frontal, stop_before_pixels=True))
    assert result.state == "found" and result.study_uid == older.study_uid, result
    assert result.study_date == "20210301" and result.comparison == "Chest radiograph of 2021-03-01."
    got, sent = pydicom.dcmread(result.image_path), pydicom.dcmread(older.frontal)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID and got.PixelData == sent.PixelData, \
        "C-GET must bring the image as stored (JPEG baseline), not decompressed by the PACS"
    assert result.report_source == "a radiologist's final SR"
    held = fetcher.store.instance(str(pydicom.dcmread(older.frontal).SOPInstanceUID))
    assert held["is_prior"] and fetcher.store.study(older.study_uid)["state"] == "done"


# --- end to end -------------------------------------------------------------------------------------------

def status_json(node: NodeProcess) -> dict:
    out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--json", "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def wait_for_job(node: NodeProcess, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = status_json(node)
        if s["recent_jobs"] and s["recent_jobs"][0]["state"] in ("done", "failed", "skipped"):
            return s
        time.sleep(0.3)
    raise AssertionError(f"no job finished in {timeout} s:\n{node.status()}\n{node.logs()}")


def job_seconds(logs: str) -> float:
    """The worker's own time for the one job (lookup, conversion, model call, SR and GSPS), from its log line."""
    import re

    (seconds,) = re.findall(r"job \d+ \(study [^)]*\) done in ([\d.]+) s", logs)
    return float(seconds)


def current_study(tmp_path: Path, data: Path) -> list[Path]:
    return derive_cxr_study(tmp_path / "current", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                            data / "cxr" / "dx_lateral_thorax_veterinary.dcm", study_date=CURRENT_DATE)


def referenced(sr: pydicom.Dataset, keyword: str) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for s in sr.get(keyword, []) for se in s.ReferencedSeriesSequence
            for i in se.ReferencedSOPSequence}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["c-move", "c-get"])
def test_prior_image_and_report_reach_the_model_and_the_sr_names_the_prior(tmp_path: Path, data: Path,
                                                                            method: str) -> None:
    from converters.model_image import to_model_image
    from converters.sr_text import report_text
    from node.models.cxrreportgen.emulator import PRIOR_SENTENCE
    from node.emulator.server import EmulatorServer

    prior = make_prior_study(tmp_path / "prior", data)
    older = make_prior_study(tmp_path / "older", data, study_date="20210301")  # same patient, not the latest
    other = make_prior_study(tmp_path / "other", data, patient_id="OTHER-0002", patient_name="OTHER^PATIENT",
                             study_date="20240101")  # newer, but another patient
    uploaded = prior.files + older.files + other.files
    study = current_study(tmp_path, data)
    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=None)
        node_port = cfg["node"]["port"]
        with Orthanc(tmp_path / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", node_port)},
                     count_cstores=True) as pacs:
            for f in uploaded:
                pacs.upload(f)
            cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port),
                              priors={"query": "pacs", "method": method, "lookback_days": 1825, "timeout_seconds": 30})
            cfg["node"]["port"] = node_port
            node = NodeProcess(tmp_path, cfg)
            node.start()
            try:
                send(node, study)
                got = pacs.wait_for_instances(len(uploaded) + 2, timeout=120)
                time.sleep(2)  # anything sent back (a prior) would show up by now
                uids = pacs.sop_instance_uids()
                cstores = pacs.received_log()
                s = status_json(node)
                text_status = node.status()
            finally:
                node.stop()
    logs = node.logs()
    assert node.proc.returncode == 0
    for phi in ("DEMO^PATIENT", "DEMO-0001", "OTHER-0002", PRIOR_DATE):
        assert phi not in logs, f"{phi!r} in the node's log"

    # Nothing of the prior went back to the PACS: every C-STORE it received (counted by its Lua filter, as Orthanc
    # silently drops a copy of an instance it holds) is one of the current study's SR and GSPS, each once.
    mine = {ds.SOPInstanceUID: ds for ds in got if ds.StudyInstanceUID == frontal.StudyInstanceUID}
    assert len(uids) == len(uploaded) + 2 and len(mine) == 2, text_status
    by_cstore = [(r.study, r.modality, r.sop) for r in cstores if r.origin == "DicomProtocol"]
    assert sorted(by_cstore) == sorted((frontal.StudyInstanceUID, ds.Modality, sop) for sop, ds in mine.items()), \
        by_cstore
    sr = next(ds for ds in mine.values() if ds.Modality == "SR")

    # The request carried the latest prior of this patient: its frontal, the radiologist's final report (it wins
    # over the node's own SR in the same study) and the comparison sentence.
    calls = [r for r in emulator.requests if r["status"] == 200]
    assert len(calls) == 1
    call = calls[0]
    assert {"prior_image", "prior_report", "comparison", "lateral_image"} <= set(call["columns"]), call["columns"]
    prior_png = to_model_image(pydicom.dcmread(prior.frontal)).png
    assert call["digests"]["prior_image"] == sha(base64.b64encode(prior_png).decode("ascii"))
    expected_report = report_text(pydicom.dcmread(prior.radiologist_sr))
    assert call["digests"]["prior_report"] == sha(expected_report)
    assert call["digests"]["comparison"] == sha("Chest radiograph of 2023-01-15.")

    # The SR names the prior as other evidence, not as a predecessor, and the model's answer used it.
    prior_uid = str(pydicom.dcmread(prior.frontal, stop_before_pixels=True).SOPInstanceUID)
    assert referenced(sr, "PertinentOtherEvidenceSequence") == {prior_uid}
    assert prior_uid not in referenced(sr, "CurrentRequestedProcedureEvidenceSequence")
    assert "PredecessorDocumentsSequence" not in sr
    texts: list[str] = []

    def walk(items) -> None:
        for item in items:
            if item.get("ValueType") == "TEXT":
                texts.append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert PRIOR_SENTENCE in texts
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path)

    # The node: one job (the prior study triggered no rule), the prior study kept apart, the lookup recorded.
    assert s["jobs"] == {"done": 1}, text_status
    by_uid = {r["study_uid"]: r for r in s["recent_studies"]}
    assert by_uid[prior.study_uid]["is_prior"] and by_uid[prior.study_uid]["state"] == "done"
    assert older.study_uid not in by_uid and other.study_uid not in by_uid
    lookup = s["priors"][0]
    assert lookup["state"] == "found" and lookup["prior_study_uid"] == prior.study_uid
    assert "radiologist's final SR" in lookup["outcome"]
    assert "prior lookups:" in text_status and "found" in text_status
    assert "radiologist's final SR" in s["recent_jobs"][0]["outcome"]
    print(f"\nprior lookup ({method}, Orthanc on loopback, 1 image + 2 SRs retrieved): {lookup['seconds']:.2f} s; "
          f"whole job {job_seconds(logs):.2f} s")


@pytest.mark.slow
def test_a_pacs_without_priors_ends_well(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = current_study(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=None)
        node_port = cfg["node"]["port"]
        with Orthanc(tmp_path / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", node_port)}) as pacs:
            cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port),
                              priors={"query": "pacs", "method": "c-move"})
            cfg["node"]["port"] = node_port
            node = NodeProcess(tmp_path, cfg)
            node.start()
            try:
                send(node, study)
                got = pacs.wait_for_instances(2, timeout=120)
                s = wait_for_job(node)
                text_status = node.status()
            finally:
                node.stop()
    assert {ds.Modality for ds in got} == {"SR", "PR"}
    sr = next(ds for ds in got if ds.Modality == "SR")
    assert "PertinentOtherEvidenceSequence" not in sr
    (call,) = [r for r in emulator.requests if r["status"] == 200]
    assert not {"prior_image", "prior_report", "comparison"} & set(call["columns"]), call["columns"]
    assert s["jobs"] == {"done": 1} and s["priors"][0]["state"] == "none"
    assert "no prior CR/DX study in the 1825 days before this one" in text_status, text_status
    print(f"\nprior lookup with no prior on the PACS: {s['priors'][0]['seconds']:.2f} s; "
          f"whole job {job_seconds(node.logs()):.2f} s")


class SilentPeer:
    """A TCP server that accepts connections and never sends a byte (a hung PACS)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> "SilentPeer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
        self._thread.join(timeout=5)


@pytest.mark.slow
def test_a_pacs_that_does_not_answer_ends_well_within_the_timeout(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    timeout = 3.0
    study = current_study(tmp_path, data)
    with EmulatorServer("127.0.0.1", 0) as emulator, SilentPeer() as silent, Orthanc(tmp_path / "orthanc") as pacs:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port),
                          priors={"query": "hung", "method": "c-move", "timeout_seconds": timeout})
        cfg["destinations"]["hung"] = {"ae_title": "HUNG", "host": "127.0.0.1", "port": silent.port}
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            send(node, study)
            got = pacs.wait_for_instances(2, timeout=120)
            s = wait_for_job(node)
            text_status = node.status()
        finally:
            node.stop()
        assert silent.accepted, "the node never connected to the hung PACS"
    assert {ds.Modality for ds in got} == {"SR", "PR"}
    (call,) = [r for r in emulator.requests if r["status"] == 200]
    assert "prior_image" not in call["columns"]
    lookup = s["priors"][0]
    assert lookup["state"] == "timeout", lookup
    assert timeout - 0.5 <= lookup["seconds"] <= timeout + 2, lookup
    assert s["jobs"] == {"done": 1}
    assert f"did not answer within {timeout:g} s" in text_status, text_status
    print(f"\nprior lookup against a PACS that never answers: {lookup['seconds']:.2f} s (timeout {timeout:g} s); "
          f"whole job {job_seconds(node.logs()):.2f} s")
