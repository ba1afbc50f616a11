"""C-GET into the spool (node/dicom/qr.py ``SpoolingStoreHandler``) with pynetdicom's chunked receive on (as the
``serve`` process's SCP sets it) and off (the worker process, where prior look-ups and AIW-I inputs run, never sets
it): a real Orthanc sends the instance; the spool holds it as the PACS stored it and the database records it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import _config

from node.dicom.qr import SUCCESS, Deadline, Peer, QRSession, SpoolingStoreHandler
from node.store.spool import Spool
from node.store.state import Store
from support.orthanc import Orthanc
from support.studies import derive_cxr_study

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked-receive", "in-memory-receive"])
def test_c_get_lands_in_the_spool_either_way(tmp_path: Path, data: Path, chunked: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", chunked)
    (frontal,) = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    sent = pydicom.dcmread(frontal)
    spool = Spool(tmp_path / "var")
    spool.create()
    store = Store.open(f"sqlite:///{tmp_path / 'node.db'}")
    with Orthanc(tmp_path / "orthanc", modalities={"AINODE": ("AINODE", "127.0.0.1", 11112)}) as pacs:
        pacs.upload(frontal)
        handler = SpoolingStoreHandler(spool, store, "PACS", 0.0, is_prior=True)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = sent.StudyInstanceUID
        query.SeriesInstanceUID = sent.SeriesInstanceUID
        query.SOPInstanceUID = sent.SOPInstanceUID
        with QRSession(Peer("pacs", "127.0.0.1", pacs.dicom_port, pacs.aet), Deadline(60), ae_title="AINODE",
                       method="c-get", move_destination="AINODE", on_store=handler) as session:
            status = session.retrieve(query)
        stored = pacs.get_dicom(pacs.instances()[0])
    assert status == SUCCESS, f"C-GET final status 0x{status:04X}"
    row = store.instance(str(sent.SOPInstanceUID))
    assert row is not None and row["is_prior"], row
    got = pydicom.dcmread(row["path"])
    assert got.SOPInstanceUID == stored.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert got.PixelData == stored.PixelData, "the instance as the PACS holds it, not re-encoded"
    assert list(spool.tmp.iterdir()) == [], "nothing left in the spool's tmp"
