"""The node end to end: dcmtk storescu -> dicom-node serve -> emulator -> a real Orthanc, read back and checked.

Also the crash test: SIGKILL after the study was acknowledged and before the results went out, restart,
and exactly one copy of each result in Orthanc (by SOP Instance UID).
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest

from support.nodekit import send
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import derive_cxr_study
from support.validate import assert_valid_dicom

pytestmark = pytest.mark.slow


def sr_regions(sr: pydicom.Dataset) -> list[tuple[str, list[float], str]]:
    """(sentence, GraphicData, referenced SOP Instance UID) of every planar ROI group of a TID 1500 SR."""
    regions = []

    def walk(items) -> None:
        for item in items:
            children = list(item.get("ContentSequence", []))
            texts = [c.TextValue for c in children if c.get("ValueType") == "TEXT"
                     and c.ConceptNameCodeSequence[0].CodeValue == "121106"]  # (DCM, Comment): the sentence
            scoords = [c for c in children if c.get("ValueType") == "SCOORD"]
            for sc in scoords:
                ref = sc.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                regions.append((texts[0] if texts else "", [float(v) for v in sc.GraphicData], str(ref)))
            walk(children)

    walk(sr.ContentSequence)
    return regions


def expected_boxes(frontal: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
    """What the emulator will answer for this frontal image, mapped to source pixels by the centre-crop rule."""
    from converters.model_image import to_model_image
    from node.models.cxrreportgen.emulator import emulate_findings

    ds = pydicom.dcmread(frontal)
    image = to_model_image(ds)
    W, H = ds.Columns, ds.Rows
    c = min(W, H)
    out = []
    for text, boxes in emulate_findings(image.png):
        for x0, y0, x1, y1 in boxes or []:
            out.append((text, (x0 * c + (W - c) / 2, y0 * c + (H - c) / 2, x1 * c + (W - c) / 2, y1 * c + (H - c) / 2)))
    return out


def test_chest_xray_study_to_orthanc(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    lateral = pydicom.dcmread(study[1], stop_before_pixels=True)
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port)))
        node.start()
        try:
            send(node, study)
            t_acked = time.monotonic()
            got = pacs.wait_for_instances(2, timeout=120)
            t_stored = time.monotonic()
        finally:
            node.stop()
        assert node.proc.returncode == 0, "SIGTERM must drain and exit cleanly"
        logs = node.logs()
        for phi in ("DEMO^PATIENT", "DEMO-0001", frontal.get("PatientBirthDate") or "no-birth-date"):
            assert phi not in logs, f"PHI {phi!r} in the node's log"
        by_modality = {ds.Modality: ds for ds in got}
        assert set(by_modality) == {"SR", "PR"}, node.logs()
        sr, pr = by_modality["SR"], by_modality["PR"]
        for ds in (sr, pr):
            path = tmp_path / f"{ds.Modality}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert_valid_dicom(path)
            assert ds.StudyInstanceUID == frontal.StudyInstanceUID
            assert ds.SeriesInstanceUID not in (frontal.SeriesInstanceUID, lateral.SeriesInstanceUID)
            assert "EMULATED" in ds.SeriesDescription.upper()

        # Evidence: both source images; every region on the frontal; the boxes where the centre-crop rule puts them.
        evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert evidence == {frontal.SOPInstanceUID, lateral.SOPInstanceUID}
        regions = sr_regions(sr)
        expected = expected_boxes(study[0])
        assert expected, "the emulator should ground at least one finding"
        assert len(regions) == len(expected)
        for (text, points, ref), (exp_text, (x0, y0, x1, y1)) in zip(regions, expected):
            assert ref == frontal.SOPInstanceUID
            assert text == exp_text
            want = [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0]
            assert points == pytest.approx(want, abs=1e-3)

        # The presentation state draws the same boxes on the frontal and shows a MONOCHROME1 image correctly.
        assert pr.PresentationLUTShape == "INVERSE"
        assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == frontal.SOPInstanceUID
        drawn = [[float(v) for v in g.GraphicData] for a in pr.GraphicAnnotationSequence
                 for g in a.get("GraphicObjectSequence", [])]
        assert len(drawn) == len(expected)
        for points, (_, (x0, y0, x1, y1)) in zip(drawn, expected):
            assert points == pytest.approx([x0, y0, x1, y0, x1, y1, x0, y1, x0, y0], abs=1e-3)

        request = [r for r in emulator.requests if r.get("status") == 200]
        assert len(request) == 1 and "lateral_image" in request[0]["columns"]
        print(f"\nlast instance acknowledged -> results in Orthanc: {t_stored - t_acked:.2f} s "
              f"(quiet timer 1 s; see node log for the endpoint time)")


@pytest.mark.faults
def test_sigkill_after_ack_before_results_delivers_exactly_once(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url,
                                                 pacs=(pacs.aet, pacs.dicom_port)))
        emulator.script_faults([{"stall_seconds": 20}])  # the first call hangs: the node dies during it
        node.start()
        try:
            send(node, study)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not emulator.requests:
                time.sleep(0.1)
            assert emulator.requests, "the node never called the endpoint"
            node.kill()  # acknowledged, endpoint call in flight, nothing delivered
            assert pacs.sop_instance_uids() == []
            node.start()  # the restart resumes the job; the emulator answers normally now
            got = pacs.wait_for_instances(2, timeout=120)
            time.sleep(3)  # anything sent twice would show up by now
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
        finally:
            node.stop()
        assert sorted(uids) == sorted({ds.SOPInstanceUID for ds in got}), uids
        assert len(uids) == 2, f"expected one SR and one GSPS, got {len(uids)}:\n{node.status()}"
        assert {ds.Modality for ds in got} == {"SR", "PR"}


@pytest.mark.faults
def test_sigkill_with_results_in_the_outbox_delivers_exactly_once(tmp_path: Path, data: Path) -> None:
    """The PACS is down when the results are ready; the node is killed; both come back; one copy each."""
    from support.ports import free_port

    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm", None)
    pacs_port = free_port()
    with EmulatorServer("127.0.0.1", 0) as emulator:
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url, pacs=("ORTHANC", pacs_port)))
        node.start()
        try:
            send(node, study)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "will be retried" not in node.logs():
                time.sleep(0.2)
            assert "will be retried" in node.logs(), node.logs()
            node.kill()
            with Orthanc(tmp_path / "orthanc", dicom_port=pacs_port, count_cstores=True) as pacs:
                node.start()
                got = pacs.wait_for_instances(2, timeout=120)
                time.sleep(3)
                uids = pacs.sop_instance_uids()
                cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
                assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
        finally:
            node.stop()
        assert len(uids) == 2 and sorted(uids) == sorted(ds.SOPInstanceUID for ds in got)
        assert len(emulator.requests) == 1, "the endpoint must not be called again for results already made"


def test_late_instance_reopens_study_and_new_sr_points_to_the_old_one(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url,
                                                 pacs=(pacs.aet, pacs.dicom_port)))
        node.start()
        try:
            send(node, study[:1])  # the frontal alone
            first = pacs.wait_for_instances(2, timeout=120)
            send(node, study[1:])  # the lateral arrives after the study was processed
            got = pacs.wait_for_instances(4, timeout=120)
            time.sleep(2)
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
            status = node.status()
        finally:
            node.stop()
    assert len(uids) == 4, "the first results must not be sent again, the new ones once"
    old_sr = next(ds for ds in first if ds.Modality == "SR")
    new_sr = next(ds for ds in got if ds.Modality == "SR" and ds.SOPInstanceUID != old_sr.SOPInstanceUID)
    pred = new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == old_sr.SOPInstanceUID
    assert new_sr.SeriesInstanceUID != old_sr.SeriesInstanceUID
    assert len(emulator.requests) == 2 and "lateral_image" in emulator.requests[1]["columns"]
    assert "done" in status and "v2" in status, status
