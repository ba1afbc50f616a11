"""The mini PACS harness itself (tests/support/pacs.py): keeps what it stores, on disk when asked."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pynetdicom import AE

from support.pacs import MiniPACS


def test_mini_pacs_keeps_the_instance_and_writes_it_to_its_folder(tmp_path: Path, data: Path) -> None:
    source = data / "cxr" / "cr_pa_jpeg_baseline.dcm"
    ds = pydicom.dcmread(source)
    with MiniPACS(ae_title="TESTPACS", folder=tmp_path / "pacs") as pacs:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.ae_title)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(ds).Status == 0x0000
        finally:
            assoc.release()
    assert pacs.stored == [ds.SOPInstanceUID]
    [path] = pacs.received
    assert path.parent == tmp_path / "pacs" and path.name == f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
