"""A workitem's inputs by C-GET and by C-MOVE from a real Orthanc (``inputs: c-get | c-move``, node/ups/retrieve.py):
each input instance ends in the node's spool and database, as Orthanc sent it. In one process: the node's Storage
SCP receives the C-MOVE's sub-operations."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from node.config import parse_config
from node.dicom.scp import StorageSCP
from node.flow.intake import Intake
from node.store.spool import Spool
from node.store.state import Store
from node.ups.retrieve import retrieve_inputs
from node.ups.workitem import inputs_of
from support.orthanc import Orthanc
from support.ports import free_port
from support.studies import derive_cxr_study
from support.worklist import TASK_CODE, workitem

pytestmark = pytest.mark.slow


def test_inputs_come_by_c_get_and_by_c_move(tmp_path: Path, data: Path) -> None:
    from node.dicom.pynetdicom_patches import configure_pynetdicom

    configure_pynetdicom()  # as in the node's serve process: received data sets go to files (C-GET's handler)
    files = derive_cxr_study(tmp_path / "study", data / "cxr" / "cr_pa_jpeg_baseline.dcm",
                             data / "cxr" / "dx_lateral_thorax_veterinary.dcm")
    wanted = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    node_port = free_port()
    with Orthanc(tmp_path / "orthanc", modalities={"node": ("AINODE", "127.0.0.1", node_port)}) as pacs:
        for f in files:
            pacs.upload(f)
        for method in ("c-get", "c-move"):
            cfg = parse_config({
                "node": {"storage_dir": str(tmp_path / method), "port": node_port, "host": "127.0.0.1",
                         "min_free_disk_mb": 0},
                "endpoints": {"cxr": {"model": "cxrreportgen", "url": "http://127.0.0.1:1/score", "auth": "none"}},
                "destinations": {"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
                "rules": [{"name": "chest", "endpoint": "cxr"}],
                "sources": [{"type": "ups-rs", "url": "http://127.0.0.1:1/v2", "inputs": method,
                             "retrieve_from": "pacs", "timeout_seconds": 30,
                             "workitems": [{"code": TASK_CODE, "rule": "chest"}]}]})
            store = Store.open(cfg.database_url)
            spool = Spool(cfg.storage_dir)
            spool.create()
            scp = StorageSCP(cfg, store, spool, Intake(cfg, store, None)) if method == "c-move" else None
            if scp is not None:
                scp.start()
            try:
                retrieve_inputs(cfg, cfg.sources[0], store, spool, inputs_of(workitem(generate_uid(), files, None)))
            finally:
                if scp is not None:
                    scp.stop(1)
            got = {sop: store.instance(sop) for sop in wanted}
            assert all(got.values()), f"{method}: inputs not recorded: {got}"
            for sop, row in got.items():
                assert Path(row["path"]).is_file() and row["is_prior"] is False
                assert str(pydicom.dcmread(row["path"], stop_before_pixels=True).SOPInstanceUID) == sop
