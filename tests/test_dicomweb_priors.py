"""Priors over DICOMweb: QIDO-RS finds the patient's earlier study, WADO-RS brings its frontal and its SRs.

Against a real Orthanc with its DICOMweb plugin and against the emulated Azure DICOM service; the same
rules as over DIMSE (the latest earlier study with a frontal image, the radiologist's final SR first).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from node.dicomweb import multipart
from node.emulator.azure_dicom import AzureDicomEmulator
from support.orthanc import Orthanc
from support.studies import CURRENT_DATE, RADIOLOGIST_FINDINGS, RADIOLOGIST_IMPRESSION, derive_cxr_study, make_prior_study


def fetcher_for(tmp_path: Path, url: str, **priors):
    from node.config import parse_config
    from node.models.cxrreportgen.priors import PriorFetcher
    from node.store.spool import Spool
    from node.store.state import Store

    cfg = parse_config({"node": {"storage_dir": str(tmp_path / "var")},
                        "destinations": {"archive": {"type": "dicomweb", "url": url}},
                        "priors": {"query": "archive", **priors}})
    spool = Spool(cfg.storage_dir)
    spool.create()
    return PriorFetcher(cfg, Store.open(cfg.database_url), spool)


def stow(url: str, files: list[Path]) -> None:
    body, content_type = multipart.encode(f.read_bytes() for f in files)
    rsp = httpx.post(f"{url}/studies", content=body, headers={"Content-Type": content_type}, timeout=60,
                     trust_env=False)
    assert rsp.status_code == 200, rsp.text


def studies(tmp_path: Path, data: Path):
    lateral_only = derive_cxr_study(tmp_path / "lat", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                    frontal_view="LL", study_date="20230601")
    older = make_prior_study(tmp_path / "older", data, study_date="20210301")
    (frontal,) = derive_cxr_study(tmp_path / "cur", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                  study_date=CURRENT_DATE)
    return lateral_only, older, frontal


def check(fetcher, result, older) -> None:
    assert result.state == "found" and result.study_uid == older.study_uid, result
    assert result.study_date == "20210301"
    got, sent = pydicom.dcmread(result.image_path), pydicom.dcmread(older.frontal)
    assert got.SOPInstanceUID == sent.SOPInstanceUID and got.PixelData == sent.PixelData
    assert result.report == f"Findings: {RADIOLOGIST_FINDINGS}\nImpressions: {RADIOLOGIST_IMPRESSION}"
    assert result.report_source == "a radiologist's final SR"
    held = fetcher.store.instance(str(sent.SOPInstanceUID))
    assert held["is_prior"] and fetcher.store.study(older.study_uid)["state"] == "done", "kept apart"


def test_priors_from_the_emulated_azure_dicom_service(tmp_path: Path, data: Path) -> None:
    lateral_only, older, frontal = studies(tmp_path, data)
    with AzureDicomEmulator(tmp_path / "azure") as azure:
        stow(azure.url, lateral_only + older.files)
        fetcher = fetcher_for(tmp_path, azure.url)
        result = fetcher.fetch(pydicom.dcmread(frontal, stop_before_pixels=True))
        check(fetcher, result, older)
        other = fetcher.fetch(pydicom.dcmread(older.frontal, stop_before_pixels=True))
        assert other.state == "none", "the oldest study has no prior (never itself, never a later study)"


def test_a_dicomweb_service_that_is_down_ends_well(tmp_path: Path, data: Path) -> None:
    (frontal,) = derive_cxr_study(tmp_path / "cur", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                  study_date=CURRENT_DATE)
    fetcher = fetcher_for(tmp_path, "http://127.0.0.1:1/v2", timeout_seconds=5)
    result = fetcher.fetch(pydicom.dcmread(frontal, stop_before_pixels=True))
    assert result.state == "error" and "archive" in result.outcome


@pytest.mark.slow
def test_priors_from_orthanc_over_qido_and_wado(tmp_path: Path, data: Path) -> None:
    lateral_only, older, frontal = studies(tmp_path, data)
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as pacs:
        for f in lateral_only + older.files:
            pacs.upload(f)
        fetcher = fetcher_for(tmp_path, pacs.dicomweb_url)
        result = fetcher.fetch(pydicom.dcmread(frontal, stop_before_pixels=True))
        check(fetcher, result, older)


def test_a_dicomweb_service_that_accepts_and_never_answers_costs_the_timeout_only(tmp_path: Path, data: Path) -> None:
    import socket
    import threading

    (frontal,) = derive_cxr_study(tmp_path / "cur", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None,
                                  study_date=CURRENT_DATE)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    try:
        fetcher = fetcher_for(tmp_path, f"http://127.0.0.1:{listener.getsockname()[1]}/v2", timeout_seconds=2)
        result = fetcher.fetch(pydicom.dcmread(frontal, stop_before_pixels=True))
    finally:
        for s in held:
            s.close()
        listener.close()
    assert result.state == "timeout" and "2 s" in result.outcome, result  # priors.timeout_seconds, not 30 s
