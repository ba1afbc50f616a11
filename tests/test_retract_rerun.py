"""Retract and re-run end to end: storescu -> dicom-node serve -> emulator -> a real Orthanc, then
`dicom-node retract` (an IOCM rejection note received by Orthanc, valid for dciodvfy, listing exactly the SR and
GSPS Orthanc got) and `dicom-node rerun` (a new SR whose PredecessorDocumentsSequence names the replaced SR).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from support.nodekit import send
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import derive_cxr_study
from support.validate import assert_valid_dicom

pytestmark = pytest.mark.slow

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage (PS3.4 Annex B)
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"}


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=120)
    return out


def test_retract_then_rerun_against_orthanc(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_mono1_uncompressed.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc") as pacs:
        node = NodeProcess(tmp_path, node_config(tmp_path, endpoint_url=emulator.url,
                                                 pacs=(pacs.aet, pacs.dicom_port)))
        node.start()
        try:
            send(node, study)
            first = pacs.wait_for_instances(2, timeout=120)
            first_uids = {str(ds.SOPInstanceUID) for ds in first}
            old_sr = next(ds for ds in first if ds.SOPClassUID in SR_CLASSES)

            bad = cli(node, "retract", "--study", study_uid, "--reason", "no-such-reason")
            assert bad.returncode != 0  # argparse names the allowed reasons
            out = cli(node, "retract", "--study", study_uid, "--reason", "quality", "--json")
            assert out.returncode == 0, out.stdout + out.stderr
            got = pacs.wait_for_instances(3, timeout=120)
            kos = [ds for ds in got if ds.SOPClassUID == KOS_CLASS]
            assert len(kos) == 1, [ds.SOPClassUID for ds in got]
            note = kos[0]
            title = note.ConceptNameCodeSequence[0]
            assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
            listed = {str(item.ReferencedSOPInstanceUID)
                      for series in note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                      for item in series.ReferencedSOPSequence}
            assert listed == first_uids  # the SR and the GSPS Orthanc received, nothing else
            assert str(note.StudyInstanceUID) == study_uid
            assert str(note.SeriesInstanceUID) not in {str(ds.SeriesInstanceUID) for ds in first}
            note_path = tmp_path / "kos.dcm"
            note.save_as(note_path, enforce_file_format=True)
            assert_valid_dicom(note_path)

            again = cli(node, "retract", "--study", study_uid, "--reason", "quality")
            assert again.returncode == 1 and "rejected already" in again.stderr

            out = cli(node, "rerun", "--study", study_uid)
            assert out.returncode == 0, out.stdout + out.stderr
            got = pacs.wait_for_instances(5, timeout=120)
        finally:
            node.stop()
    new = [ds for ds in got if str(ds.SOPInstanceUID) not in first_uids and ds.SOPClassUID != KOS_CLASS]
    assert len(new) == 2, [ds.SOPClassUID for ds in new]
    new_sr = next(ds for ds in new if ds.SOPClassUID in SR_CLASSES)
    predecessors = [str(item.ReferencedSOPInstanceUID)
                    for study_item in new_sr.PredecessorDocumentsSequence
                    for series in study_item.ReferencedSeriesSequence
                    for item in series.ReferencedSOPSequence]
    assert predecessors == [str(old_sr.SOPInstanceUID)]
