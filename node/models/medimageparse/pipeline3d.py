"""MedImageParse 3D: a CT/MR series -> NIfTI volume -> mask volume -> DICOM SEG on the source slices.

- Which series (rule param ``series``): ``largest-axial`` (default) picks the largest axial CT/MR volume among the
  series the rule matched, never a localizer, scout, dose report or DERIVED\\SECONDARY image
  (:func:`converters.volume_series.select_volume_series`); ``matched`` makes every matched series its own volume.
- One call per prompt (the model takes one target per call); one SEG per volume with one segment per prompt.
  Codes: the reply has no category, so the prompt's keywords (or ``params.category``) choose them
  (:func:`dicom_out.seg_codes.codes_for_prompt`).
- Geometry: the reply's mask carries its own affine, and every voxel of the request grid takes the mask voxel at
  the same world point (:func:`converters.volume_mask.mask_on_volume`); slice ``k`` of the request volume is the source
  instance ``volume.source_sop_uids[k]``, so SEG frame ``k`` references exactly that instance, whatever order the
  files arrived in and whatever voxel order the model answers in.
- A volume whose request would exceed ``params.max_request_mb`` fails the job with a message saying so, before
  anything is sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom

from converters.volume import series_to_volume
from converters.volume_header import VolumeError
from converters.volume_mask import mask_on_volume
from converters.volume_series import select_volume_series
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.seg import SegmentSpec, build_segmentation
from node.models.medimageparse.contract3d import build_request, parse_response, request_size
from node.models.medimageparse.params import Parse3DParams
from node.models.registry import params_for

from node.models.base import JobContext, JobOutput
from node.models.medimageparse.masks import segment_values
from node.models.sc_fallback import seg_scs, wants_sc

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9920  # + the volume's index within the job


class VolumeTooLargeError(ValueError):
    """The volume's request would exceed the endpoint's body limit (``params.max_request_mb``)."""


def read_headers(paths: list[Path]) -> tuple[list[tuple[Path, pydicom.Dataset]], list[str]]:
    """(path, header) of every readable file, and a note per file that could not be read."""
    headers, problems = [], []
    for path in paths:
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as exc:  # noqa: BLE001 - a stored file that no longer reads must not stop the job
            problems.append(f"{path.name}: unreadable ({type(exc).__name__})")
    return headers, problems


def volumes_wanted(params: Parse3DParams, headers: list[tuple[Path, pydicom.Dataset]]
                    ) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """(series UID, slice files) of each volume to build, and notes on what was left out."""
    if params.series == "largest-axial":
        chosen = select_volume_series(headers)  # VolumeError when nothing qualifies
        return [(chosen.series_uid, chosen.paths)], [chosen.reason]
    by_series: dict[str, list[Path]] = {}
    for path, ds in headers:
        if "Rows" in ds and "Columns" in ds:
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(path)
    return sorted(by_series.items()), []


def run(ctx: JobContext) -> JobOutput:
    """Build the volume(s), call the endpoint once per prompt, and write one SEG per volume."""
    params: Parse3DParams = params_for("medimageparse3d", ctx.rule.params)
    headers, notes = read_headers(ctx.instance_paths)
    try:
        wanted, why = volumes_wanted(params, headers)
    except VolumeError as exc:
        return JobOutput(state="skipped", outcome=f"no volume to segment: {exc}")
    by_uid = {str(ds.SOPInstanceUID): ds for _, ds in headers}
    limit = int(params.max_request_mb * 1024 * 1024)
    results: list[tuple[str, pydicom.Dataset]] = []
    endpoint_seconds = 0.0
    version: str | None = None
    emulated = False
    for index, (series_uid, paths) in enumerate(wanted):
        try:
            volume = series_to_volume(paths)
        except VolumeError as exc:
            notes.append(f"series {series_uid}: {exc}")
            continue
        nifti = volume.to_nifti_gz_bytes()
        for prompt in params.prompt:
            size = request_size(len(nifti), prompt)
            if size > limit:
                cols, rows, slices = volume.data.shape
                raise VolumeTooLargeError(
                    f"series {series_uid}: a {cols}x{rows}x{slices} volume makes a {size / 2**20:.1f} MiB request, "
                    f"over the endpoint limit of {limit / 2**20:.1f} MiB (rule params.max_request_mb)")
        masks = []
        for n, prompt in enumerate(params.prompt):
            reply = ctx.client.score(build_request(nifti, prompt, max_request_bytes=None),
                                     request_id=f"{ctx.request_id}-v{index}p{n}")
            endpoint_seconds += reply.elapsed_seconds
            version = version or reply.model_version
            emulated = emulated or reply.emulated
            image = parse_response(reply.body, affine=volume.affine)
            masks.append(mask_on_volume(np.asanyarray(image.dataobj), image.affine, volume))
        # (i, j, k) = (column, row, slice) -> SEG frames (slice, row, column), one segment per prompt.
        stacked = np.stack([m.transpose(2, 1, 0) for m in masks], axis=-1)
        values, fractional = segment_values(stacked, mode=params.segmentation_type, threshold=params.threshold)
        algorithm = AlgorithmInfo(name="MedImageParse 3D",
                                  version=version or ctx.endpoint.deployment or "unspecified", emulated=emulated)
        sources = [by_uid[uid] for uid in volume.source_sop_uids]
        # series_to_volume accepted orientations equal within 1e-4; highdicom wants them identical (header copies).
        for ds in sources[1:]:
            ds.ImageOrientationPatient = sources[0].ImageOrientationPatient
        seg = build_segmentation(
            source_images=sources,
            masks=values,
            segments=[SegmentSpec.from_prompt(p, params.category) for p in params.prompt],
            algorithm=algorithm,
            series_instance_uid=ctx.uid(f"seg-series-{series_uid}"),
            sop_instance_uid=ctx.uid(f"seg-{series_uid}"),
            series_number=SEG_SERIES_NUMBER + index,
            fractional=fractional,
        )
        results.append(("seg", seg))
        if wants_sc(ctx):
            results += seg_scs(ctx, sources, values, params.prompt, algorithm, key=f"3d-{series_uid}")
        voxels = [int(np.count_nonzero(m)) for m in masks]
        notes.insert(0, f"series {series_uid}: {volume.data.shape[2]} slices, {len(params.prompt)} segment(s), "
                        f"{'FRACTIONAL' if fractional else 'BINARY'}, voxels {voxels}")
    if not results:
        return JobOutput(state="skipped", outcome="no volume could be built: " + "; ".join(notes),
                         endpoint_seconds=endpoint_seconds)
    outcome = "; ".join(notes + why)
    return JobOutput(state="done", outcome=outcome[:2000], results=results, endpoint_seconds=endpoint_seconds)
