"""MedImageInsight: images -> embeddings (stored for similar-case search) -> optional zero-shot labels + SR.

Rule ``params`` (all optional):

- ``labels``: ``{label_set: [text, ...]}``, e.g. ``{view: ["x-ray chest posteroanterior", "x-ray chest lateral"]}``
  (texts follow ``<modality> <anatomy> <exam parameters> <condition>``). With labels, every image gets the
  probabilities ``softmax(exp(scaling_factor) * cosine)`` per set (:func:`node.invoke.medimageinsight.zero_shot`),
  the winning labels are stored for classification-aware routing, and a Comprehensive SR (TID 1500) goes to the
  rule's ``send_to``. Without labels the job only stores embeddings and sends nothing.
- ``resize``: longer side in pixels (e.g. 512) to downscale on the client; default: full resolution.
- ``max_request_bytes`` (default 8 MiB) and ``max_rows`` (default 32): how inputs are batched into requests.

Zero-shot needs the reply's ``scaling_factor``; a deployment that answers none (the mi2-deploy notebook's output)
uses ``endpoints.<name>.scaling_factor``, else a rule with labels fails naming that key (:func:`scaling_factor`).

Text embeddings of the labels are cached per endpoint and model version (table ``text_embeddings``); only the
missing ones are requested, as text-only rows. Embeddings and labels are written in the transaction that finishes
the job (``JobOutput.writes``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pydicom

from converters.insight import InsightImage, skip_reason, to_insight_image
from converters.pixels import PixelConversionError
from dicom_out.algorithm import AlgorithmInfo
from dicom_out.classification_sr import ImageClassification, build_classification_sr
from node.store.embeddings import EmbeddingRecord, LabelRecord, cache_texts, cached_texts, job_writes
from node.models.medimageinsight.contract import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_ROWS,
    InsightInput,
    build_requests,
    parse_response,
    zero_shot,
)

from node.models.base import JobContext, JobOutput

log = logging.getLogger(__name__)

MODEL_NAME = "MedImageInsight"
SR_SERIES_NUMBER = 9903


def label_sets(params: Mapping) -> dict[str, list[str]]:
    """``params.labels`` checked: a mapping of set names to at least two distinct non-empty texts."""
    raw = params.get("labels") or {}
    if not isinstance(raw, Mapping):
        raise ValueError("params.labels must map label set names to lists of texts")
    out: dict[str, list[str]] = {}
    for name, texts in raw.items():
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"params.labels.{name} must be a list of non-empty texts")
        texts = list(dict.fromkeys(t.strip() for t in texts))
        if len(texts) < 2:
            raise ValueError(f"params.labels.{name} needs at least two different labels")
        out[str(name)] = texts
    return out


class NoScalingFactor(ValueError):
    """A rule with labels on an endpoint whose replies carry no scaling_factor, and none configured."""


_WARNED: set[tuple[str, str]] = set()


def scaling_factor(ctx: JobContext, answered: float | None) -> float:
    """The zero-shot scaling factor: the reply's, else ``endpoints.<name>.scaling_factor``; else
    :class:`NoScalingFactor` naming the key (the deployment sends none: Microsoft's mi2-deploy notebook shows it)."""
    configured = ctx.endpoint.scaling_factor
    if answered is not None:
        if configured is not None and abs(configured - answered) > 1e-6 and (ctx.endpoint_name, "differs") not in _WARNED:
            _WARNED.add((ctx.endpoint_name, "differs"))
            log.warning("endpoint %s answers scaling_factor %g; endpoints.%s.scaling_factor %g is not used",
                        ctx.endpoint_name, answered, ctx.endpoint_name, configured)
        return float(answered)
    if configured is None:
        raise NoScalingFactor(
            f"rule {ctx.rule.name}: endpoint {ctx.endpoint_name} returned no scaling_factor (asked with "
            f"params.get_scaling_factor: true), so its labels cannot be scored: set endpoints.{ctx.endpoint_name}."
            f"scaling_factor (the model document's example value is 4.516357; check it against your deployment)")
    if (ctx.endpoint_name, "configured") not in _WARNED:
        _WARNED.add((ctx.endpoint_name, "configured"))
        log.warning("endpoint %s returned no scaling_factor: using endpoints.%s.scaling_factor %g", ctx.endpoint_name,
                    ctx.endpoint_name, configured)
    return float(configured)


def _images(ctx: JobContext, resize: int | None) -> tuple[list[InsightImage], dict[str, pydicom.Dataset], int]:
    images: list[InsightImage] = []
    headers: dict[str, pydicom.Dataset] = {}
    skipped = 0
    for path in ctx.instance_paths:
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # accepted once by the SCP; a file that no longer reads is skipped
            log.warning("job %s: cannot read %s: %s", ctx.job.get("id"), path.name, type(exc).__name__)
            skipped += 1
            continue
        if "PixelData" not in ds or skip_reason(ds) is not None:
            skipped += 1
            continue
        try:
            image = to_insight_image(ds, resize=resize)
        except PixelConversionError as exc:
            log.warning("job %s: %s", ctx.job.get("id"), exc)
            skipped += 1
            continue
        if image.sop_instance_uid in headers:
            continue
        del ds.PixelData
        headers[image.sop_instance_uid] = ds
        images.append(image)
    return images, headers, skipped


def _text_vectors(ctx: JobContext, texts: list[str], model_version: str, batching: dict,
                  ) -> tuple[dict[str, np.ndarray], float | None, float]:
    engine = ctx.store.engine if ctx.store is not None else None
    have, factor = cached_texts(engine, ctx.endpoint_name, model_version, texts) if engine is not None else ({}, None)
    missing = [t for t in texts if t not in have]
    seconds = 0.0
    if missing:
        new: dict[str, np.ndarray] = {}
        inputs = [InsightInput(key=f"text{i}", text=t) for i, t in enumerate(missing)]
        for n, (batch, payload) in enumerate(build_requests(inputs, **batching)):
            reply = ctx.client.score(payload, request_id=f"{ctx.request_id}-t{n}")
            seconds += reply.elapsed_seconds
            parsed = parse_response(reply.body, n_texts=len(batch))
            new.update({item.text: vec for item, vec in zip(batch, parsed.text_features)})
            factor = parsed.scaling_factor if parsed.scaling_factor is not None else factor
        if engine is not None:
            cache_texts(engine, ctx.endpoint_name, model_version, new, factor)
        have.update(new)
    return have, factor, seconds


def run(ctx: JobContext) -> JobOutput:
    """Embed the images of the matched series; classify them when the rule has labels."""
    params = ctx.rule.params
    sets = label_sets(params)
    resize = params.get("resize")
    batching = {"max_rows": int(params.get("max_rows", DEFAULT_MAX_ROWS)),
                "max_request_bytes": int(params.get("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))}
    images, headers, skipped = _images(ctx, int(resize) if resize else None)
    if not images:
        return JobOutput(state="skipped", outcome=f"no image to embed ({skipped} file(s) skipped)")

    vectors: list[np.ndarray] = []
    factor: float | None = None
    seconds = 0.0
    replies = []
    inputs = [InsightInput(key=img.sop_instance_uid, image=img.png) for img in images]
    for n, (batch, payload) in enumerate(build_requests(inputs, **batching)):
        reply = ctx.client.score(payload, request_id=f"{ctx.request_id}-b{n}")
        replies.append(reply)
        seconds += reply.elapsed_seconds
        parsed = parse_response(reply.body, n_images=len(batch))
        vectors.extend(parsed.image_features)
        factor = parsed.scaling_factor if parsed.scaling_factor is not None else factor
    model_version = ctx.model_version(replies[-1])
    emulated = any(r.emulated for r in replies)
    records = [EmbeddingRecord(sop_instance_uid=img.sop_instance_uid, series_uid=img.series_uid,
                               study_uid=img.study_uid, model_name=MODEL_NAME, model_version=model_version,
                               vector=vec) for img, vec in zip(images, vectors)]
    outcome = f"{len(records)} image(s) embedded in {len(replies)} request(s)"
    if skipped:
        outcome += f", {skipped} file(s) skipped"
    if not sets:
        return JobOutput(state="done", outcome=outcome, endpoint_seconds=seconds, writes=[job_writes(records, [])])

    all_texts = [t for texts in sets.values() for t in texts]
    text_vecs, text_factor, text_seconds = _text_vectors(ctx, all_texts, model_version, batching)
    seconds += text_seconds
    factor = scaling_factor(ctx, factor if factor is not None else text_factor)
    labels: list[LabelRecord] = []
    items: list[ImageClassification] = []
    for img, vec in zip(images, vectors):
        per_set: dict[str, dict[str, float]] = {}
        for name, texts in sets.items():
            probs = zero_shot(vec, np.stack([text_vecs[t] for t in texts]), factor)
            per_set[name] = {t: float(p) for t, p in zip(texts, probs)}
            labels.append(LabelRecord(
                sop_instance_uid=img.sop_instance_uid, series_uid=img.series_uid, study_uid=img.study_uid,
                label_set=name, label=max(per_set[name], key=lambda k: (per_set[name][k], k)),
                probabilities=per_set[name], model_name=MODEL_NAME, model_version=model_version,
                rule_name=ctx.rule.name))
        items.append(ImageClassification(image=headers[img.sop_instance_uid], probabilities=per_set))
    algorithm = AlgorithmInfo(name=MODEL_NAME, version=model_version, emulated=emulated)
    sr = build_classification_sr(items=items, algorithm=algorithm, series_instance_uid=ctx.uid("sr-series"),
                                 sop_instance_uid=ctx.uid("sr"), series_number=SR_SERIES_NUMBER,
                                 predecessor=ctx.previous_results("sr"))
    winners = sorted({f"{r.label_set}={r.label}" for r in labels})
    return JobOutput(state="done", outcome=f"{outcome}; classified: {', '.join(winners)}"[:500],
                     results=[("sr", sr)], endpoint_seconds=seconds, writes=[job_writes(records, labels)])
