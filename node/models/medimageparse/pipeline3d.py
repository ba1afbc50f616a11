"""MedImageParse 3D: a CT/MR series -> NIfTI volume -> mask volume -> DICOM SEG on the source slices.

- Which series (rule param ``series``): ``largest-axial`` (default) picks the largest axial CT/MR volume among the
  series the rule matched, never a localizer, scout, dose report or DERIVED\\SECONDARY image
  (:func:`converters.volume_series.select_volume_series`); ``matched`` makes every matched series its own volume.
- Prompts: up to ``endpoints.<name>.prompts_per_call`` (default 15, as the model card) joined with ``&`` in one
  call; the reply's label map (or prompt-first 4-D array) is split per prompt
  (:meth:`~node.models.medimageparse.contract3d.MaskReply.per_prompt`). A reply whose prompt axis does not match
  the prompts sent (or a model that refuses the joined text) makes the node ask again one prompt per call; a
  mismatch is remembered for the endpoint (WARNING once). One SEG per volume with one segment per prompt.
  Codes: the reply has no category, so the prompt's keywords (or ``params.category``) choose them
  (:func:`dicom_out.seg_codes.codes_for_prompt`).
- Geometry: a mask with a usable affine (:func:`converters.volume_mask.affine_kind`) is resampled onto the request
  grid: every voxel takes the mask voxel at the same world point. A mask without one (no affine, the identity,
  voxel sizes only, a raw array) whose shape equals the request's is placed by voxel order, as Microsoft's sample
  reads it, with a WARNING once per endpoint; any other is a :class:`VolumeError`. Slice ``k`` of the request
  volume is the source instance ``volume.source_sop_uids[k]``, so SEG frame ``k`` references exactly that instance,
  whatever order the files arrived in and whatever voxel order the model answers in.
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
from converters.volume import Volume
from converters.volume_mask import place_mask
from converters.volume_series import select_volume_series
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.seg import SegmentSpec, build_segmentation
from node.invoke.errors import EndpointError
from node.models.endpoint_settings import prompts_per_call
from node.models.medimageparse.contract3d import MaskReply, build_request, joined, read_reply, request_size
from node.models.medimageparse.params import Parse3DParams
from node.models.registry import params_for

from node.models.base import JobContext, JobOutput
from node.models.medimageparse.masks import segment_values
from node.models.sc_fallback import seg_scs, wants_sc

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9920  # + the volume's index within the job

# Per process: endpoints whose replies to joined prompts did not match (asked one prompt per call from then on),
# and the warnings already given.
_ONE_PER_CALL: set[tuple[str, str | None]] = set()
_WARNED: set[tuple[str, str]] = set()


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
        size = request_size(len(nifti), joined(params.prompt))
        if size > limit:
            cols, rows, slices = volume.data.shape
            raise VolumeTooLargeError(
                f"series {series_uid}: a {cols}x{rows}x{slices} volume makes a {size / 2**20:.1f} MiB request, "
                f"over the endpoint limit of {limit / 2**20:.1f} MiB (rule params.max_request_mb)")
        masks, replies, placed = masks_for(ctx, nifti, volume, params.prompt, index)
        endpoint_seconds += sum(r.elapsed_seconds for r in replies)
        version = version or (ctx.model_version(replies[0]) if replies else None)
        emulated = emulated or any(r.emulated for r in replies)
        # (i, j, k) = (column, row, slice) -> SEG frames (slice, row, column), one segment per prompt.
        stacked = np.stack([m.transpose(2, 1, 0) for m in masks], axis=-1)
        values, fractional = segment_values(stacked, mode=params.segmentation_type, threshold=params.threshold)
        algorithm = AlgorithmInfo(name="MedImageParse 3D", version=version or "unspecified", emulated=emulated)
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
                        f"{'FRACTIONAL' if fractional else 'BINARY'}, voxels {voxels}, {len(replies)} call(s), "
                        f"mask {', '.join(sorted(placed))}")
    if not results:
        return JobOutput(state="skipped", outcome="no volume could be built: " + "; ".join(notes),
                         endpoint_seconds=endpoint_seconds)
    outcome = "; ".join(notes + why)
    return JobOutput(state="done", outcome=outcome[:2000], results=results, endpoint_seconds=endpoint_seconds)


def _warn_once(endpoint: str, what: str, message: str, *args: object) -> None:
    if (endpoint, what) not in _WARNED:
        _WARNED.add((endpoint, what))
        log.warning(message, *args)


def _place(ctx: JobContext, mask: np.ndarray, answer: MaskReply, volume: Volume, placed: set[str]) -> np.ndarray:
    data, kind, how = place_mask(mask, answer.affine, answer.declared, volume)
    placed.add(f"{kind} affine, by {how}")
    if how == "voxel order":
        _warn_once(ctx.endpoint_name, f"voxel-{kind}", "endpoint %s: the MedImageParse 3D mask (%s) has no usable "
                   "affine (%s); placed by voxel order, as Microsoft's sample reads it, since its shape equals the "
                   "request's", ctx.endpoint_name, answer.form, kind)
    return data


def masks_for(ctx: JobContext, nifti: bytes, volume: Volume, prompts: list[str], index: int
              ) -> tuple[list[np.ndarray], list, set[str]]:
    """One mask per prompt on ``volume``'s grid, the replies, and how the masks were placed (see the docstring)."""
    where = (ctx.endpoint_name, ctx.endpoint.url or ctx.endpoint.endpoint_name)
    per_call = 1 if where in _ONE_PER_CALL else prompts_per_call(ctx.endpoint)
    masks: list[np.ndarray] = []
    replies: list = []
    placed: set[str] = set()
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        got: list[np.ndarray] | None = None
        if len(chunk) > 1:
            try:
                reply = ctx.client.score(build_request(nifti, joined(chunk), max_request_bytes=None),
                                         request_id=f"{ctx.request_id}-v{index}j{start}")
            except EndpointError as exc:
                if exc.cause != "model-input":
                    raise
                log.warning("endpoint %s refused %d joined prompts (%s); asking one prompt per call",
                            ctx.endpoint_name, len(chunk), exc.message[:300])
            else:
                replies.append(reply)
                answer = read_reply(reply.body)
                split = answer.per_prompt(len(chunk))
                if split is None:
                    _ONE_PER_CALL.add(where)
                    _warn_once(ctx.endpoint_name, "axis", "endpoint %s answered %d prompts joined with '&' with %s "
                               "(prompt axis %s, labels %s, text_features %s): not one mask per prompt; asking one "
                               "prompt per call from now on (set endpoints.%s.prompts_per_call: 1 to skip the "
                               "joined call)", ctx.endpoint_name, len(chunk), answer.form, answer.prompt_axis,
                               answer.labels()[:8], answer.text_features, ctx.endpoint_name)
                else:
                    got = [_place(ctx, m, answer, volume, placed) for m in split]
        if got is None:
            got = []
            for n, prompt in enumerate(chunk):
                reply = ctx.client.score(build_request(nifti, prompt, max_request_bytes=None),
                                         request_id=f"{ctx.request_id}-v{index}p{start + n}")
                replies.append(reply)
                answer = read_reply(reply.body)
                split = answer.per_prompt(1)
                if split is None:
                    raise ValueError(f"MedImageParse 3D reply: {answer.form} of shape {list(answer.data.shape)} "
                                     f"(text_features {answer.text_features}) for one prompt")
                got.append(_place(ctx, split[0], answer, volume, placed))
        masks += got
    return masks, replies, placed
