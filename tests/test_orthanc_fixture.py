"""The test PACS itself: a real Orthanc takes C-STORE from dcmtk's storescu, answers C-ECHO, and goes away."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from support.dcmtk import assert_ok, echoscu, storescu, transfer_syntax_flag
from support.orthanc import HOST, Orthanc, orthanc  # noqa: F401  (importing registers the fixture)
from support.ports import port_is_free

pytestmark = pytest.mark.slow


def test_storescu_into_orthanc_comes_back_by_sop_instance_uid(orthanc: Orthanc, data: Path) -> None:
    source = data / "cxr" / "cr_pa_jpeg_baseline.dcm"
    sent = pydicom.dcmread(source, stop_before_pixels=True)

    assert transfer_syntax_flag(source) == "-xy"  # JPEG baseline: storescu must be told to propose it
    assert_ok(storescu(HOST, orthanc.dicom_port, [source], called_ae=orthanc.aet, extra=["-xy"]))

    [stored] = orthanc.wait_for_instances(1, timeout=30)
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert orthanc.sop_instance_uids() == [sent.SOPInstanceUID]
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


def test_storescu_scans_a_directory(orthanc: Orthanc, data: Path) -> None:
    folder = data / "mr" / "prostate_adc_20slices"  # uncompressed: no transfer syntax flag needed
    sources = sorted(folder.glob("*.dcm"))
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sources}
    assert len(expected) == 20

    assert_ok(storescu(HOST, orthanc.dicom_port, [folder], called_ae=orthanc.aet))

    orthanc.wait_for_instances(len(expected), timeout=30)
    assert set(orthanc.sop_instance_uids()) == expected


def test_upload_through_rest(orthanc: Orthanc, data: Path) -> None:
    source = data / "cxr" / "cr_pa_mono1_uncompressed.dcm"
    orthanc.upload(source)
    [stored] = orthanc.datasets()
    assert stored.SOPInstanceUID == pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID


def test_echoscu(orthanc: Orthanc) -> None:
    assert_ok(echoscu(HOST, orthanc.dicom_port, orthanc.aet))


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_stop_frees_the_ports(tmp_path: Path, graceful: bool) -> None:
    server = Orthanc(tmp_path / "pacs", aet="PACS", modalities={"NODE": ("AINODE", HOST, 11112)})
    with server:
        assert server.running
        assert not port_is_free(server.dicom_port)
        assert not port_is_free(server.http_port)
        assert "NODE" in server.client.get("/modalities").json()
        process = server.process
        server.stop(graceful=graceful)
        if graceful:
            assert process is not None and process.returncode == 0, server.log_tail()
    assert process is not None and process.poll() is not None
    assert not server.running
    assert port_is_free(server.dicom_port)
    assert port_is_free(server.http_port)
    server.stop()  # a second stop is harmless


def test_fixed_dicom_port_survives_a_restart(tmp_path: Path, data: Path) -> None:
    """A PACS that comes back on the port the sender already knows, with the instances stored before."""
    from support.ports import free_port

    port = free_port()
    source = data / "mr" / "prostate_adc_20slices" / "000000.dcm"
    with Orthanc(tmp_path / "pacs", dicom_port=port) as first:
        assert first.dicom_port == port
        assert_ok(storescu(HOST, port, [source], called_ae=first.aet))
        first.wait_for_instances(1, timeout=30)
        first.stop(graceful=False)
    assert port_is_free(port)
    with Orthanc(tmp_path / "pacs", dicom_port=port) as again:
        assert again.dicom_port == port
        assert_ok(echoscu(HOST, port, again.aet))
        assert len(again.instances()) == 1
