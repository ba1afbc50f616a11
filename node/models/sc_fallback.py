"""Burned-in Secondary Captures for destinations whose viewers show neither SR, GSPS nor SEG (``results: [sc]``).

Written only when a destination of the rule asks for ``sc`` (``ctx.result_kinds``); the worker sends each result
kind only where it is wanted. One SC per annotated image: the frontal with its boxes (CXRReportGen), or each
source frame a segment covers, with the masks' outlines (MedImageParse 2D / 3D).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from converters.pixels import to_uint8
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.sc import BoxAnnotation, MaskAnnotation, build_annotated_sc
from dicom_out.sr import GroundedFinding

from node.models.base import JobContext

SC_SERIES_NUMBER = 9950


def wants_sc(ctx: JobContext) -> bool:
    """Does a destination of this job's rule receive Secondary Captures?"""
    return "sc" in ctx.result_kinds


def cxr_sc(ctx: JobContext, frontal_path: Path, findings: Sequence[GroundedFinding],
           algorithm: AlgorithmInfo) -> list[tuple[str, pydicom.Dataset]]:
    """The frontal with every box and its sentence burned in (nothing when no finding has a box)."""
    boxes = [BoxAnnotation(f.text, box) for f in findings for box in f.boxes]
    if not boxes:
        return []
    source = pydicom.dcmread(frontal_path)
    sc = build_annotated_sc(source=source, image=to_uint8(source), algorithm=algorithm, boxes=boxes,
                            series_instance_uid=ctx.uid("sc-series"), sop_instance_uid=ctx.uid("sc"),
                            series_number=SC_SERIES_NUMBER)
    return [("sc", sc)]


def seg_scs(ctx: JobContext, sources: Sequence[pydicom.Dataset], values: np.ndarray, labels: Sequence[str],
            algorithm: AlgorithmInfo, key: str) -> list[tuple[str, pydicom.Dataset]]:
    """One SC per single-frame source image that a segment covers, the segments' outlines burned in.

    ``values``: (frames, rows, columns, segments) as given to the SEG writer, frames in the order of ``sources``
    (headers: the pixels are read from ``ctx.instance_paths``). Multi-frame sources are left out.
    """
    if len(sources) != values.shape[0]:
        return []
    paths = _paths_by_uid(ctx)
    out: list[tuple[str, pydicom.Dataset]] = []
    for index, header in enumerate(sources):
        uid = str(header.SOPInstanceUID)
        frame = values[index]
        if uid not in paths or not np.any(frame):
            continue
        source = pydicom.dcmread(paths[uid])
        masks = [MaskAnnotation(label, frame[..., n] > 0) for n, label in enumerate(labels) if np.any(frame[..., n])]
        sc = build_annotated_sc(source=source, image=to_uint8(source), algorithm=algorithm, masks=masks,
                                series_instance_uid=ctx.uid(f"sc-series-{key}"), sop_instance_uid=ctx.uid(f"sc-{uid}"),
                                series_number=SC_SERIES_NUMBER + 1, instance_number=len(out) + 1)
        out.append(("sc", sc))
    return out


def _paths_by_uid(ctx: JobContext) -> dict[str, Path]:
    out = {}
    for path in ctx.instance_paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        out[str(ds.SOPInstanceUID)] = path
    return out
