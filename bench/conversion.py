"""Conversion: DICOM series -> NIfTI (the node's converter vs dcm2niix), DICOM -> model PNG per image, and SEG
writing for the 64-slice CT.

The NIfTI figure is the whole job on both sides: read every file, build the volume, write a gzip-compressed
.nii.gz (the node into memory, dcm2niix to a temporary folder; dcm2niix's fastest settings for a fair race:
``-z y -1`` (gzip level 1, as the node), no BIDS sidecar). Both read from the page cache (a warm-up run each).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import CT_DIR, DATA, MR_DIR, alternate, ct_files, median, row, timed, tool

GROUP = "conversion"


def _node_nifti(files: list[Path]) -> bytes:
    from converters.volume import series_to_volume

    return series_to_volume(files).to_nifti_gz_bytes()


def _dcm2niix(folder: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    subprocess.run([tool("dcm2niix"), "-z", "y", "-1", "-b", "n", "-f", "vol", "-o", str(out), str(folder)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nifti_rows(quick: bool) -> list[dict[str, Any]]:
    runs = 1 if quick else 9
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, folder in (("CT 64x512x512", CT_DIR), ("MR ADC 20x256x256", MR_DIR)):
            files = sorted(folder.glob("*.dcm"))
            out = Path(tmp) / "niix"
            _node_nifti(files), _dcm2niix(folder, out)  # warm the page cache and imports
            times = alternate({"node": lambda: timed(lambda: _node_nifti(files)),
                               "dcm2niix": lambda: timed(lambda: _dcm2niix(folder, out))}, runs)
            node, ref = median(times["node"]), median(times["dcm2niix"])
            rows.append(row(GROUP, f"DICOM series -> .nii.gz: {label}", node * 1000, "ms", reference="dcm2niix -z y -1",
                            ref_value=ref * 1000, higher_is_better=False, note="target: within 1.5x (ratio >= 0.67)"))
    return rows


def png_rows(quick: bool) -> list[dict[str, Any]]:
    import pydicom

    from converters.model_image import to_model_image
    from converters.parse2d import to_parse_image

    runs = 1 if quick else 9
    rows = []
    cases = [("CXR PA 1024x1024 JPEG -> CXRReportGen PNG", DATA / "cxr" / "cr_pa_jpeg_baseline.dcm",
              lambda ds: to_model_image(ds)),
             ("CR PA 1955x1841 15-bit -> CXRReportGen PNG", DATA / "cxr" / "cr_pa_mono1_uncompressed.dcm",
              lambda ds: to_model_image(ds)),
             ("CT slice 512x512 -> MedImageParse 1024 PNG (lung window)", ct_files()[32],
              lambda ds: to_parse_image(ds, prompt="lung")),
             ]
    for label, path, fn in cases:
        def once() -> float:
            return timed(lambda: fn(pydicom.dcmread(path)))
        once()
        rows.append(row(GROUP, f"read + convert: {label}", median([once() for _ in range(runs)]) * 1000, "ms",
                        note="per image, absolute (no reference tool)"))
    return rows


def seg_rows(quick: bool) -> list[dict[str, Any]]:
    import pydicom
    from pydicom.uid import generate_uid

    from dicom_out.algorithm import AlgorithmInfo
    from dicom_out.seg import SegmentSpec, build_segmentation

    runs = 1 if quick else 3
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in ct_files()]
    rows_, cols = int(sources[0].Rows), int(sources[0].Columns)
    masks = np.zeros((len(sources), rows_, cols, 1), dtype=bool)
    yy, xx = np.mgrid[:rows_, :cols]
    for k in range(len(sources)):  # a sphere-like blob through the middle slices
        r = max(0, 120 - abs(k - 32) * 4)
        masks[k, :, :, 0] = (yy - 256) ** 2 + (xx - 200) ** 2 < r * r
    segments = [SegmentSpec.from_model_category("lung", "lung")]

    def once() -> float:
        def build() -> None:
            seg = build_segmentation(source_images=sources, masks=masks, segments=segments,
                                     algorithm=AlgorithmInfo("MedImageParse3D", "bench", emulated=True),
                                     series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
                                     series_number=901)
            import io

            seg.save_as(io.BytesIO(), enforce_file_format=True)
        return timed(build)

    once() if not quick else None
    return [row(GROUP, "SEG writing: 64-slice CT, 1 segment (highdicom, BINARY)",
                median([once() for _ in range(runs)]) * 1000, "ms", note="build + serialise, absolute")]


def run(quick: bool) -> list[dict[str, Any]]:
    return nifti_rows(quick) + png_rows(quick) + seg_rows(quick)
