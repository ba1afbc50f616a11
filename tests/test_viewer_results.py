"""``destinations.<name>.results``: each destination receives the result kinds its workstations display.

A PACS whose viewers show neither SR, GSPS nor SEG gets the burned-in Secondary Captures (``sc``) only; the
default destination gets sr, gsps, seg and no SC. End to end with two real Orthancs.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from support.dcmtk import assert_ok, storescu
from support.nodekit import send
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from support.validate import assert_valid_dicom

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def test_results_default_and_validation() -> None:
    from node.config import ConfigError, parse_config

    base = {"endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                             "old": {"ae_title": "OLD", "host": "127.0.0.1", "port": 105, "results": ["sc"]}},
            "rules": [{"name": "r", "endpoint": "cxr", "send_to": ["pacs", "old"]}]}
    cfg = parse_config(base)
    assert cfg.destinations["pacs"].results == ["sr", "gsps", "seg"]
    assert cfg.destinations["old"].results == ["sc"]
    base["destinations"]["old"]["results"] = ["pdf"]
    with pytest.raises(ConfigError, match="results"):
        parse_config(base)


def test_outbox_rows_follow_the_kinds_each_destination_wants() -> None:
    from node.store.jobs import destinations_for

    kinds = {"pacs": ["sr", "gsps", "seg"], "old": ["sc"]}
    assert destinations_for("sr", ["pacs", "old"], kinds) == ["pacs"]
    assert destinations_for("sc", ["pacs", "old"], kinds) == ["old"]
    assert destinations_for("seg", ["pacs", "old"], kinds) == ["pacs"]
    assert destinations_for("sr", ["pacs", "old"], None) == ["pacs", "old"]


def segmented_sources(seg: pydicom.Dataset) -> set[str]:
    """SOP Instance UIDs of the source images under the SEG's non-empty frames."""
    masks = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    return {str(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for fg, mask in zip(seg.PerFrameFunctionalGroupsSequence, masks) if mask.any()}


@pytest.mark.slow
def test_sc_only_destination_gets_burned_in_images_and_nothing_else(tmp_path: Path, data: Path) -> None:
    from support.studies import derive_cxr_study
    from node.emulator.server import EmulatorServer

    study = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    ct = sorted((data / "ct/chest_ct_5mm_64slices").glob("*.dcm"))
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "new") as new, \
            Orthanc(tmp_path / "old", aet="OLDPACS", count_cstores=True) as old:
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(new.aet, new.dicom_port), quiet=1.5)
        cfg["destinations"]["old"] = {"ae_title": old.aet, "host": "127.0.0.1", "port": old.dicom_port,
                                      "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2, "results": ["sc"]}
        cfg["endpoints"]["parse"] = {"model": "medimageparse", "url": emulator.model_url("medimageparse"),
                                     "auth": "none", "timeout_seconds": 60}
        cfg["rules"][0]["send_to"] = ["pacs", "old"]
        cfg["rules"].append({"name": "ct-slices", "match": {"Modality": "CT"}, "endpoint": "parse",
                             "params": {"prompt": "lung", "frames": "instances:20,40"}, "send_to": ["pacs", "old"]})
        cfg["queue"] = {"workers": 1}
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            send(node, study)
            assert_ok(storescu("127.0.0.1", node.port, ct, extra=["-x="]))
            got_new = new.wait_for_instances(3, timeout=180)  # SR, GSPS, SEG
            # the CT slices the model annotated: the SEG's non-empty frames, as the PACS received it
            annotated = segmented_sources(next(ds for ds in got_new if ds.Modality == "SEG"))
            old.wait_for_instances(1 + len(annotated), timeout=180)  # SC of the frontal, one per annotated slice
            time.sleep(2)  # a late or second SC would arrive now
            got_new, got_old = new.datasets(), old.datasets()
            cstores_old = old.cstore_counts()
        finally:
            node.stop()
    assert sorted(ds.Modality for ds in got_new) == ["PR", "SEG", "SR"], node.logs()[-3000:]
    assert all(ds.SOPClassUID == SC_CLASS for ds in got_old), [ds.SOPClassUID for ds in got_old]
    frontal = pydicom.dcmread(study[0], stop_before_pixels=True)
    sources = sorted(str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in got_old)
    ct_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct}
    assert len(annotated) == 2 and annotated <= ct_uids, "both slices asked for (prompt: lung) were segmented"
    assert sources == sorted([str(frontal.SOPInstanceUID), *annotated]), "one SC per annotated slice, nothing else"
    assert sorted(cstores_old.values()) == [1] * len(got_old), f"each SC C-STOREd once: {cstores_old}"
    for ds in got_old:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        assert ds.BurnedInAnnotation == "YES" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert "EMULATED" in ds.SeriesDescription
        assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in got_new}
