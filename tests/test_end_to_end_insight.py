"""MedImageInsight end to end: storescu -> dicom-node serve -> emulator -> Orthanc, with classification-aware routing.

A chest X-ray study whose headers have no ViewPosition (the frontal as published, the lateral stripped of it)
reaches CXRReportGen only through its zero-shot view label; the classification SR reaches the PACS too; a rule
asking for a label no image won is skipped; and ``dicom-node similar`` finds each image first for itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from support.dcmtk import storescu, transfer_syntax_flag
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.studies import derive_cxr_study
from test_insight import sr_groups
from support.validate import assert_valid_dicom

pytestmark = pytest.mark.slow

LABELS = ["x-ray chest posteroanterior", "x-ray chest anteroposterior", "x-ray chest lateral"]
FRONTAL = LABELS[:2]


def emulated_winners(paths: list[Path], resize: int) -> dict[str, tuple[str, np.ndarray]]:
    """What the emulator's vectors and the zero-shot formula give per image: SOP UID -> (label, probabilities)."""
    from converters.insight import to_insight_image
    from node.models.medimageinsight.emulator import SCALING_FACTOR, embed_image, embed_text
    from node.models.medimageinsight.contract import zero_shot

    texts = np.stack([embed_text(t) for t in LABELS])
    out = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        p = zero_shot(embed_image(to_insight_image(ds, resize=resize).png), texts, SCALING_FACTOR)
        out[str(ds.SOPInstanceUID)] = (LABELS[int(np.argmax(p))], p)
    return out


def similar(node: NodeProcess, *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "node.cli", "similar", "--config", str(node.config_path),
                           "--json", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_view_classification_routes_a_study_without_viewposition(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "dx_frontal_no_viewposition.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm", frontal_view=None, lateral_view=None)
    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    lateral = pydicom.dcmread(study[1], stop_before_pixels=True)
    assert "ViewPosition" not in frontal and "ViewPosition" not in lateral
    winners = emulated_winners(study, resize=512)
    # the premise of the routing check: the emulator calls the frontal frontal and the lateral lateral
    assert winners[frontal.SOPInstanceUID][0] in FRONTAL and winners[lateral.SOPInstanceUID][0] == LABELS[2]
    unused = next(label for label in FRONTAL if label != winners[frontal.SOPInstanceUID][0])

    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port))
        cfg["endpoints"]["insight"] = {"model": "medimageinsight", "url": emulator.model_url("medimageinsight"),
                                       "auth": "none", "timeout_seconds": 30, "max_attempts": 3,
                                       "backoff_initial_seconds": 0.2, "backoff_max_seconds": 1,
                                       "model_version": "MedImageInsight:emulator-1"}
        cfg["rules"] = [
            {"name": "view", "match": {"Modality": ["CR", "DX"]}, "endpoint": "insight", "send_to": ["pacs"],
             "params": {"labels": {"view": LABELS}, "resize": 512, "max_rows": 1}},
            {"name": "cxr-by-view", "endpoint": "cxr", "send_to": ["pacs"],
             "match": {"Modality": ["CR", "DX"], "classified": {"view": FRONTAL}}},
            {"name": "unused-label", "endpoint": "cxr", "send_to": ["pacs"],
             "match": {"Modality": "DX", "classified": {"view": [unused]}}},
        ]
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            for f in study:
                proc = storescu("127.0.0.1", node.port, [f], extra=[transfer_syntax_flag(f)])
                assert proc.returncode == 0, proc.stdout + proc.stderr
            got = pacs.wait_for_instances(3, timeout=180)  # classification SR, report SR, GSPS
            time.sleep(2)  # nothing more may come
            status = node.status()
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
            by_uid = similar(node, "--sop-instance-uid", frontal.SOPInstanceUID, "--k", "2")
            by_file = similar(node, "--image", str(study[1]), "--k", "2")
        finally:
            node.stop()
    assert len(uids) == 3, f"{len(uids)} instances in the PACS:\n{status}\n{node.logs()[-3000:]}"
    assert node.proc.returncode == 0, "SIGTERM must drain and exit cleanly"
    for phi in ("DEMO^PATIENT", "DEMO-0001"):
        assert phi not in node.logs(), f"PHI {phi!r} in the node's log"
    srs = [ds for ds in got if ds.Modality == "SR"]
    classification = next(ds for ds in srs if "classification" in ds.SeriesDescription.lower())
    report = next(ds for ds in srs if ds is not classification)
    assert {ds.Modality for ds in got} == {"SR", "PR"}
    for ds in got:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        assert ds.StudyInstanceUID == frontal.StudyInstanceUID and "EMULATED" in ds.SeriesDescription.upper()

    # The classification SR: one group per image, the winning label and the probabilities the formula gives.
    from dicom_out.classification_sr import label_code

    groups = {g["source"]: g for g in sr_groups(classification)}
    assert set(groups) == {frontal.SOPInstanceUID, lateral.SOPInstanceUID}
    for uid, (label, probs) in winners.items():
        assert groups[uid]["winner"] == label_code(label).value
        for text, p in zip(LABELS, probs):
            assert groups[uid]["probabilities"][label_code(text).value] == pytest.approx(p, abs=1e-4)

    # The report went to CXRReportGen with the frontal chosen by its label (no lateral: it was not matched).
    evidence = {str(i.ReferencedSOPInstanceUID) for s in report.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == {frontal.SOPInstanceUID}
    cxr_calls = [r for r in emulator.requests if r.get("model") == "cxrreportgen" and r.get("status") == 200]
    assert len(cxr_calls) == 1 and "lateral_image" not in cxr_calls[0]["columns"]
    insight_calls = [r for r in emulator.requests if r.get("model") == "medimageinsight"]
    # max_rows 1: one row per request: 2 images, then the 3 label texts (not cached yet), then the --image query
    assert [r["rows"] for r in insight_calls] == [1] * 6
    assert "no image classified as" in status and "unused-label" in status, status

    # Similar cases: each image comes back first for itself; --image embeds the file through the endpoint.
    assert by_uid[0]["sop_instance_uid"] == frontal.SOPInstanceUID and by_uid[0]["score"] == pytest.approx(1, abs=1e-5)
    assert by_uid[1]["sop_instance_uid"] == lateral.SOPInstanceUID
    assert by_uid[0]["study_uid"] == frontal.StudyInstanceUID
    assert by_file[0]["sop_instance_uid"] == lateral.SOPInstanceUID and by_file[0]["score"] > 0.999
