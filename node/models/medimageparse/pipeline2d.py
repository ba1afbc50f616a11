"""MedImageParse (2D): selected frames -> 1024x1024 PNGs -> masks -> DICOM SEG on the exact source pixels.

- Frames (rule param ``frames``, default ``middle``): chosen per matched series by
  :func:`converters.parse2d.select_frames`; non-image instances (SR, PR, KO, encapsulated documents...) are left out.
- Every frame becomes a padded, resized PNG (:func:`converters.parse2d.to_parse_image`, CT window from the prompt
  or ``params.window``); up to ``params.batch_size`` images per request, all with the same ``&``-joined prompts.
- Each model mask goes back through the inverse of its own transform
  (:meth:`converters.parse2d.SquareTransform.mask_to_source`: nearest neighbour, padding removed) to the source
  frame's Rows x Columns.
- One SEG per source series (single-frame images: one SEG frame per analysed image, in InstanceNumber order; images
  of another size in the same series get their own SEG) and one SEG per multi-frame instance. A multi-frame SEG has
  a frame for every source frame (highdicom needs them all): frames that were not analysed are empty, and the SEG's
  outcome says how many were analysed. Analysed frames with nothing found are kept as empty frames (viewers show
  an empty segment; OHIF misplaces SEGs whose empty frames are omitted).
- One segment per prompt; category and type coded from the model's ``text_features`` category for that prompt (the
  most frequent one when images disagree; :mod:`dicom_out.seg_codes`).
- BINARY: mask value > ``params.threshold`` (128 of 255, as Microsoft's notebooks), or FRACTIONAL when the masks
  hold intermediate values (``params.segmentation_type``; :mod:`node.models.medimageparse.masks`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from converters.parse2d import ParseImage, select_frames, to_parse_image
from converters.pixels import PixelConversionError
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.seg import SegmentSpec, build_segmentation
from node.models.medimageparse.contract2d import build_request, parse_response
from node.models.medimageparse.params import Parse2DParams
from node.models.registry import params_for

from node.models.base import JobContext, JobOutput
from node.models.medimageparse.masks import segment_values
from node.models.sc_fallback import seg_scs, wants_sc

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9910  # + the SEG's index within the job

_NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "SEG", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "PLAN"}


@dataclass
class _Analysed:
    path: Path
    header: pydicom.Dataset
    image: ParseImage
    masks: np.ndarray | None = None  # (n_prompts, rows, columns), model values
    categories: list[str] | None = None


def _is_image(ds: pydicom.Dataset) -> bool:
    if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
        return False
    return "Rows" in ds and "Columns" in ds and int(ds.get("Rows") or 0) > 0 and int(ds.get("Columns") or 0) > 0


def frames_wanted(params: Parse2DParams, paths: list[Path]) -> tuple[list[tuple[Path, int, pydicom.Dataset]], list[str]]:
    """(file, frame index, header) of every frame ``params.frames`` selects, and notes on what was left out."""
    notes: list[str] = []
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    headers: dict[str, pydicom.Dataset] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{path.name}: unreadable ({type(exc).__name__})")
            continue
        if not _is_image(ds):
            continue
        headers[str(path)] = ds
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    wanted = []
    for uid in sorted(series):
        for path, frame in select_frames(series[uid], params.frames):
            wanted.append((path, frame, headers[str(path)]))
    return wanted, notes


def _convert(params: Parse2DParams, wanted: list[tuple[Path, int, pydicom.Dataset]]
             ) -> tuple[list[_Analysed], list[str]]:
    analysed, notes = [], []
    prompt_text = " ".join(params.prompt)
    window = tuple(params.window) if isinstance(params.window, (list, tuple)) else params.window
    current: tuple[str, pydicom.Dataset] | None = None
    for path, frame, header in wanted:
        try:
            if current is None or current[0] != str(path):
                current = (str(path), pydicom.dcmread(path))
            image = to_parse_image(current[1], frame=frame, prompt=prompt_text, window=window)
        except (PixelConversionError, ValueError, OSError) as exc:
            notes.append(f"instance {header.get('SOPInstanceUID', '?')} frame {frame + 1}: {exc}")
            continue
        analysed.append(_Analysed(path, header, image))
    return analysed, notes


def _group(analysed: list[_Analysed]) -> list[list[_Analysed]]:
    """Images of one SEG: single-frame images by (series, size); a multi-frame instance alone."""
    groups: dict[tuple, list[_Analysed]] = {}
    for item in analysed:
        h = item.header
        if int(h.get("NumberOfFrames", 1) or 1) > 1:
            key: tuple = ("multi", str(h.SOPInstanceUID))
        else:
            key = ("single", str(h.get("SeriesInstanceUID", "")), int(h.Rows), int(h.Columns))
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _category(items: list[_Analysed], n: int) -> str:
    votes = Counter(item.categories[n] for item in items if item.categories)
    return votes.most_common(1)[0][0] if votes else "other"


def _seg_frames(items: list[_Analysed], n_prompts: int) -> tuple[list[pydicom.Dataset], np.ndarray, str]:
    """Source images and (frames, rows, columns, prompts) model-valued masks of one SEG."""
    first = items[0].header
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        n_frames = int(first.NumberOfFrames)
        masks = np.zeros((n_frames, int(first.Rows), int(first.Columns), n_prompts), dtype=items[0].masks.dtype)
        for item in items:
            masks[item.image.frame] = np.moveaxis(item.masks, 0, -1)
        return [first], masks, f"{len(items)} of {n_frames} frames analysed"
    masks = np.stack([np.moveaxis(item.masks, 0, -1) for item in items])
    return [item.header for item in items], masks, f"{len(items)} image(s)"


def run(ctx: JobContext) -> JobOutput:
    """Convert the selected frames, call the endpoint in batches, and write one SEG per source series."""
    params: Parse2DParams = params_for("medimageparse", ctx.rule.params)
    wanted, notes = frames_wanted(params, ctx.instance_paths)
    if not wanted:
        return JobOutput(state="skipped", outcome="no image frame to segment" + (f": {'; '.join(notes)}" if notes else ""))
    analysed, problems = _convert(params, wanted)
    notes += problems
    if not analysed:
        return JobOutput(state="skipped", outcome="no frame could be converted: " + "; ".join(notes)[:1500])

    endpoint_seconds = 0.0
    last_reply = None
    emulated = False
    for start in range(0, len(analysed), params.batch_size):
        batch = analysed[start:start + params.batch_size]
        reply = ctx.client.score(build_request([item.image.png for item in batch], params.prompt),
                                 request_id=f"{ctx.request_id}-b{start // params.batch_size}")
        endpoint_seconds += reply.elapsed_seconds
        last_reply = reply
        emulated = emulated or reply.emulated
        answers = parse_response(reply.body, n_prompts=len(params.prompt), n_images=len(batch))
        for item, answer in zip(batch, answers):
            item.masks = item.image.transform.mask_to_source(answer.masks)
            item.categories = answer.categories

    algorithm = AlgorithmInfo(name="MedImageParse", version=ctx.model_version(last_reply),
                              emulated=emulated)
    results: list[tuple[str, pydicom.Dataset]] = []
    summaries = []
    for index, items in enumerate(_group(analysed)):
        sources, model_masks, what = _seg_frames(items, len(params.prompt))
        values, fractional = segment_values(model_masks, mode=params.segmentation_type,
                                            threshold=params.threshold / 255.0)
        segments = [SegmentSpec.from_model_category(p, _category(items, n)) for n, p in enumerate(params.prompt)]
        key = f"{sources[0].SeriesInstanceUID}-{sources[0].SOPInstanceUID if len(sources) == 1 else 'series'}-{index}"
        try:
            seg = build_segmentation(
                source_images=sources, masks=values, segments=segments, algorithm=algorithm,
                series_instance_uid=ctx.uid(f"seg-series-{key}"), sop_instance_uid=ctx.uid(f"seg-{key}"),
                series_number=SEG_SERIES_NUMBER + index, fractional=fractional)
        except ValueError as exc:  # e.g. a multi-frame image without per-frame geometry: no SEG can reference it
            notes.append(f"series {sources[0].SeriesInstanceUID}: no SEG written: {exc}")
            continue
        results.append(("seg", seg))
        if wants_sc(ctx):
            results += seg_scs(ctx, sources, values, params.prompt, algorithm, key=key)
        summaries.append(f"series {sources[0].SeriesInstanceUID}: {what}, "
                         f"{'FRACTIONAL' if fractional else 'BINARY'}, categories "
                         f"{[s.model_category for s in segments]}")
    if not results:
        raise ValueError("no segmentation could be written: " + "; ".join(notes)[:1500])
    outcome = "; ".join(summaries + notes)
    return JobOutput(state="done", outcome=outcome[:2000], results=results, endpoint_seconds=endpoint_seconds)
