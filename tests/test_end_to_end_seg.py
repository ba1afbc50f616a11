"""MedImageParse 2D and 3D end to end: storescu -> dicom-node serve -> emulator -> a real Orthanc.

The 64-slice CT is sent in shuffled order; the node runs a 3D rule (liver) and a 2D rule (two slices by
InstanceNumber) on it, and a 2D rule on an RGB ultrasound study. The SEGs read back from Orthanc must be valid
(dciodvfy), belong to the source study, and sit on the source pixels: every frame of the 3D SEG equals HU > 0
(the emulator's CT rule) on the slice it references.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from support.validate import assert_valid_dicom

from support.dcmtk import assert_ok, storescu, transfer_syntax_flag
from support.nodeproc import NodeProcess, node_config
from support.orthanc import Orthanc
from test_parse_pipelines import frames_by_source

pytestmark = pytest.mark.slow


def test_ct_3d_and_2d_and_rgb_2d_segmentations_reach_orthanc(tmp_path: Path, data: Path) -> None:
    from node.emulator.server import EmulatorServer

    ct_files = sorted((data / "ct/chest_ct_5mm_64slices").glob("*.dcm"))
    random.Random(11).shuffle(ct_files)
    us = tmp_path / "us" / "us_rgb_rle.dcm"
    us.parent.mkdir()
    shutil.copy(data / "other/us_rgb_rle.dcm", us)
    with EmulatorServer("127.0.0.1", 0) as emulator, Orthanc(tmp_path / "orthanc", count_cstores=True) as pacs:
        base = emulator.url.rstrip("/").rsplit("/score", 1)[0]
        cfg = node_config(tmp_path, endpoint_url=emulator.url, pacs=(pacs.aet, pacs.dicom_port), quiet=1.5)
        cfg["endpoints"] = {
            "parse": {"model": "medimageparse", "url": f"{base}/medimageparse/score", "auth": "none",
                      "timeout_seconds": 60, "model_version": "MedImageParse:emulator-1"},
            "parse3d": {"model": "medimageparse3d", "url": f"{base}/medimageparse3d/score", "auth": "none",
                        "timeout_seconds": 120, "model_version": "MedImageParse3D:emulator-1"},
        }
        cfg["rules"] = [
            {"name": "liver-ct", "match": {"Modality": "CT"}, "endpoint": "parse3d", "params": {"prompt": "liver"},
             "send_to": ["pacs"]},
            {"name": "ct-slices", "match": {"Modality": "CT"}, "endpoint": "parse",
             "params": {"prompt": "lung & heart", "frames": "instances:20,40"}, "send_to": ["pacs"]},
            {"name": "us-2d", "match": {"Modality": "US"}, "endpoint": "parse",
             "params": {"prompt": "kidney"}, "send_to": ["pacs"]},
        ]
        node = NodeProcess(tmp_path, cfg)
        node.start()
        try:
            assert_ok(storescu("127.0.0.1", node.port, ct_files, extra=["-x="]))
            assert_ok(storescu("127.0.0.1", node.port, [us], extra=[transfer_syntax_flag(us)]))
            t_acked = time.monotonic()
            got = pacs.wait_for_instances(3, timeout=180)
            t_stored = time.monotonic()
            time.sleep(2)
            uids = pacs.sop_instance_uids()
            cstores = pacs.cstore_counts()  # Orthanc drops a 2nd copy silently: count C-STOREs
            assert sorted(cstores.values()) == [1] * len(set(uids)), cstores
        finally:
            node.stop()
        assert len(uids) == 3, f"expected 3 SEGs, got {len(uids)}:\n{node.logs()[-3000:]}"
        assert {ds.Modality for ds in got} == {"SEG"}

    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in ct_files}
    ct_study = pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID
    us_header = pydicom.dcmread(us, stop_before_pixels=True)
    by_kind = {}
    for index, ds in enumerate(got):
        path = tmp_path / f"seg{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_valid_dicom(path)
        assert "EMULATED" in ds.SeriesDescription.upper()
        seg = hd.seg.segread(path)
        by_kind[(seg.StudyInstanceUID, int(seg.NumberOfFrames))] = seg
    seg3d = by_kind[(ct_study, 64)]
    assert seg3d.SegmentSequence[0].SegmentLabel == "liver"
    frames = frames_by_source(seg3d, 1)
    assert {uid for uid, _ in frames} == set(sources)
    for uid, path in sources.items():
        src = pydicom.dcmread(path)
        assert np.array_equal(frames[(uid, 1)].astype(bool), apply_modality_lut(src.pixel_array, src) > 0), uid
    seg2d = by_kind[(ct_study, 4)]  # 2 slices x 2 segments
    assert [s.SegmentLabel for s in seg2d.SegmentSequence] == ["lung", "heart"]
    numbers = {int(pydicom.dcmread(sources[uid], stop_before_pixels=True).InstanceNumber)
               for uid, _ in frames_by_source(seg2d, 1)}
    assert numbers == {20, 40}
    seg_us = by_kind[(us_header.StudyInstanceUID, 1)]
    assert (int(seg_us.Rows), int(seg_us.Columns)) == (int(us_header.Rows), int(us_header.Columns))
    print(f"\nlast instance acknowledged -> 3 SEGs in Orthanc: {t_stored - t_acked:.2f} s (quiet timer 1.5 s)")
