"""``dicom-node demo``: the whole product on one machine, with nothing to install or configure.

It starts the endpoint emulator, a small receiving PACS (a pynetdicom Storage SCP) and the node itself
(``dicom-node serve``, as a real process), sends a sample chest X-ray study shipped with the package, waits
for the Structured Report and the presentation state to reach the PACS, prints what came back and where,
and draws the boxes of the presentation state on the frontal image as a PNG.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import pydicom
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES, evt

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
#: endpoints.cxr.model_version of the demo: the emulated model's version. Like the real service, the emulator
#: reports none, so the node writes this string as the results' Algorithm Version (the documented way).
DEMO_MODEL_VERSION = "CXRReportGen:emulator-1"
FRONTAL = DEMO_DATA / "cr_pa_jpeg_baseline.dcm"
LATERAL = DEMO_DATA / "dx_lateral_thorax_veterinary.dcm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _derive_study(out_dir: Path) -> list[Path]:
    """The sample study with fresh UIDs: the PA frontal and the lateral as one study of one demo patient."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid()
    paths = []
    for i, (src, view, name) in enumerate([(FRONTAL, "PA", "frontal"), (LATERAL, "LL", "lateral")]):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = "DEMO-0001"
        ds.PatientName = "DEMO^PATIENT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesNumber = i + 1
        ds.InstanceNumber = 1
        ds.ViewPosition = view
        path = out_dir / f"{i + 1:02d}_{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class MiniPACS:
    """A small Storage SCP that keeps what it receives, so the demo needs no Orthanc."""

    def __init__(self, folder: Path, ae_title: str = "DEMOPACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = _free_port()
        self.received: list[Path] = []
        self._lock = threading.Lock()
        self._ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            self._ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = None

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append(path)
        return 0x0000

    def start(self) -> "MiniPACS":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False,
                                             evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def send_study(paths: Sequence[Path], host: str, port: int, called_ae: str, calling_ae: str = "DEMOSCU") -> None:
    """C-STORE the files over one association (pynetdicom, so the demo needs no dcmtk)."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"the node at {host}:{port} refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status is None or status.Status != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        assoc.release()


def draw_boxes_png(frontal: Path, gsps: pydicom.Dataset, out: Path) -> int:
    """Draw the presentation state's graphics on the frontal image, as a workstation would; returns boxes drawn."""
    from PIL import Image, ImageDraw

    from converters.pixels import to_uint8

    img = Image.fromarray(to_uint8(pydicom.dcmread(frontal))).convert("RGB")
    draw = ImageDraw.Draw(img)
    n = 0
    for ann in gsps.get("GraphicAnnotationSequence", []):
        for g in ann.get("GraphicObjectSequence", []):
            pts = [float(v) for v in g.GraphicData]
            xy = list(zip(pts[0::2], pts[1::2]))
            draw.line(xy, fill=(255, 64, 64), width=3)
            n += 1
        for t in ann.get("TextObjectSequence", []):
            anchor = t.get("AnchorPoint") or t.get("BoundingBoxTopLeftHandCorner")
            if anchor is not None:
                draw.text((float(anchor[0]) + 4, float(anchor[1]) + 2), str(t.UnformattedTextValue),
                          fill=(255, 255, 0))
    img.save(out)
    return n


def algorithm_of(result: pydicom.Dataset) -> str:
    """"<name> version <Algorithm Version>" of a result the node wrote (its "Processing Algorithm" contributor)."""
    from dicom_out.algorithm import PROCESSING_ALGORITHM_CODE_VALUE

    for item in result.get("ContributingEquipmentSequence", []):
        purpose = item.get("PurposeOfReferenceCodeSequence") or [{}]
        if purpose[0].get("CodeValue") == PROCESSING_ALGORITHM_CODE_VALUE:
            return f"{item.get('ManufacturerModelName', '?')} version {item.SoftwareVersions}"
    return "not named"


def run_demo(out: Path, *, keep_running: bool = False, timeout: float = 180.0) -> int:
    """Run the demo; results and the PNG go to ``out``. Returns a process exit code."""
    from node.emulator.server import EmulatorServer
    from node.http.preview import sr_findings

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dicom-node-demo-"))
    pacs = MiniPACS(out / "pacs").start()
    emulator = EmulatorServer("127.0.0.1", 0).start()
    node_port = _free_port()
    config = {
        "node": {"ae_title": "AINODE", "host": "127.0.0.1", "port": node_port, "storage_dir": str(work / "var"),
                 "study_complete_after_seconds": 2, "min_free_disk_mb": 50},
        "endpoints": {"cxr": {"model": "cxrreportgen", "url": emulator.url, "auth": "none", "timeout_seconds": 60,
                              "max_attempts": 3, "backoff_initial_seconds": 0.5,
                              "model_version": DEMO_MODEL_VERSION}},
        "destinations": {"pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}},
        "rules": [{"name": "chest-xray-findings", "match": {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST*"},
                   "endpoint": "cxr", "send_to": ["pacs"]}],
    }
    cfg_path = work / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"emulator:  {emulator.url} (answers are marked EMULATED)")
    print(f"mini PACS: {pacs.ae_title}@127.0.0.1:{pacs.port}, storing in {pacs.folder}")
    print(f"node:      AINODE@127.0.0.1:{node_port}, config {cfg_path}")
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--config", str(cfg_path)])
    code = 1
    try:
        _wait_port(node_port, 60, node)
        study = _derive_study(work / "study")
        t_sent = time.monotonic()
        send_study(study, "127.0.0.1", node_port, "AINODE")
        print(f"sent:      {len(study)} instances (PA + lateral) of a sample chest X-ray study")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(pacs.received) < 2:
            if node.poll() is not None:
                raise RuntimeError("the node exited early")
            time.sleep(0.2)
        if len(pacs.received) < 2:
            print(f"timed out: the PACS received {len(pacs.received)} of 2 results; "
                  f"see `dicom-node status --config {cfg_path}`")
            return 1
        elapsed = time.monotonic() - t_sent
        results = {p.name.split("_")[0]: p for p in pacs.received}
        sr = pydicom.dcmread(results["SR"])
        gsps = pydicom.dcmread(results["PR"])
        print(f"\nresults in the PACS {elapsed:.1f} s after the study was sent (quiet timer 2 s included):")
        print(f"  Structured Report  {results['SR']}")
        print(f"  Presentation state {results['PR']}")
        print(f"  series: {sr.SeriesDescription!r} / {gsps.SeriesDescription!r}")
        print("findings:")
        for sentence in sr_findings(sr):  # boxed or not: what the study page lists too
            print(f"  - {sentence}")
        png = out / "boxes_on_frontal.png"
        n = draw_boxes_png(study[0], gsps, png)
        print(f"\n{n} box(es) drawn on the frontal image: {png}")
        print(f"algorithm: {algorithm_of(sr)} (ContributingEquipmentSequence of the SR)")
        code = 0
        if keep_running:
            print("\nrunning; Ctrl-C to stop")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=60)
        except subprocess.TimeoutExpired:
            node.kill()
        emulator.stop()
        pacs.stop()
    return code


def _wait_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the node did not listen on port {port} within {timeout:.0f} s")
