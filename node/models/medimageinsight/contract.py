"""The MedImageInsight request and reply, as the model document (seed 001) shows them, and zero-shot scoring.

Request (one row per input; a row is an image, a text, or both)::

    {"input_data": {"columns": ["image", "text"], "index": [0, 1, ...],
                    "data": [[<b64 PNG or "">, <text or "">], ...]},
     "params": {"get_scaling_factor": true}}

Images are lossless PNGs (8-bit grey or RGB; the server resizes to 512x512 itself). The text column stays empty
unless text is asked for; text-only rows send an empty image. :func:`build_requests` splits many inputs into
requests of at most ``max_rows`` rows and ``max_request_bytes`` bytes of JSON (the document: "keep this number in
the dozens"; the endpoint bandwidth is about 5 MB/s).

Reply: ``{"image_features": [[1024 floats], ...], "text_features": [[...], ...], "scaling_factor": 4.5}``; a list
of such rows (one per input) is accepted too, as is the body as a JSON string. :func:`parse_response` returns the
vectors as float32 arrays, L2-normalised (the model's are already; normalising again is harmless and makes the dot
product a cosine whatever the server sends).

Zero-shot (:func:`zero_shot`): ``p = softmax(exp(scaling_factor) * cos(image, text_k))`` over the labels of one
set. The document calls ``scaling_factor`` the "temperature" to use when comparing cosine similarities; its example
value (4.516) is a log scale as in CLIP (``exp(4.516) = 91.5``, CLIP's learned logit scale is capped at
``exp(4.605) = 100``), and Microsoft's zero-shot sample multiplies the cosines by ``exp(scaling_factor)`` before
the softmax. That is the formula used here.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COLUMNS: tuple[str, str] = ("image", "text")
EMBEDDING_DIM = 1024
MAX_ROWS = 1024  # the document's "index: 0 - 1024"
DEFAULT_MAX_ROWS = 32  # "keep this number in the dozens"
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ENVELOPE_BYTES = 128  # {"input_data": {"columns": [...], "index": [], "data": []}, "params": {...}}


@dataclass(frozen=True)
class InsightInput:
    """One row: an image (PNG bytes), a text, or both; ``key`` is the caller's name for it (not sent)."""

    key: str
    image: bytes | None = field(default=None, repr=False)
    text: str | None = None

    def row(self) -> list[str]:
        image = base64.b64encode(self.image).decode("ascii") if self.image is not None else ""
        return [image, self.text or ""]


@dataclass(frozen=True)
class InsightReply:
    """Parsed reply: one vector per image row and per text row, in request order, and the scaling factor."""

    image_features: np.ndarray  # (n_images, dim) float32, L2-normalised
    text_features: np.ndarray  # (n_texts, dim) float32, L2-normalised
    scaling_factor: float | None


# --- request -----------------------------------------------------------------------------------------

def _check_input(item: InsightInput, i: int) -> None:
    if item.image is None and not (item.text and item.text.strip()):
        raise ValueError(f"input {i} ({item.key}) has neither an image nor a text")
    if item.image is not None:
        if not isinstance(item.image, (bytes, bytearray)):
            raise TypeError(f"input {i}: image must be PNG bytes, not {type(item.image).__name__}")
        if not bytes(item.image).startswith(_PNG_SIGNATURE):
            raise ValueError(f"input {i} ({item.key}) is not a PNG file (the format MedImageInsight accepts)")


def build_request(inputs: Sequence[InsightInput], *, get_scaling_factor: bool = True) -> dict:
    """One scoring payload for ``inputs`` (all rows in one request; see :func:`build_requests` to split)."""
    inputs = list(inputs)
    if not inputs:
        raise ValueError("at least one input is needed")
    if len(inputs) > MAX_ROWS:
        raise ValueError(f"{len(inputs)} rows; at most {MAX_ROWS} per request")
    for i, item in enumerate(inputs):
        _check_input(item, i)
    return {"input_data": {"columns": list(COLUMNS), "index": list(range(len(inputs))),
                           "data": [item.row() for item in inputs]},
            "params": {"get_scaling_factor": bool(get_scaling_factor)}}


def row_bytes(item: InsightInput) -> int:
    """The JSON size of one row of the request (base64 image, escaped text, separators)."""
    image_chars = 4 * ((len(item.image) + 2) // 3) if item.image is not None else 0
    text_chars = len(json.dumps(item.text or "")) - 2
    return image_chars + text_chars + 16  # quotes, brackets, commas and the row's index entry


def build_requests(inputs: Sequence[InsightInput], *, max_rows: int = DEFAULT_MAX_ROWS,
                   max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                   get_scaling_factor: bool = True) -> list[tuple[list[InsightInput], dict]]:
    """Split ``inputs`` into requests of at most ``max_rows`` rows and ``max_request_bytes`` bytes of JSON.

    Order is kept. Returns ``(batch, payload)`` pairs. An input that alone exceeds ``max_request_bytes`` is a
    ``ValueError`` naming it (resize the image: the server works at 512x512 anyway).
    """
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    if max_request_bytes < 1024:
        raise ValueError("max_request_bytes must be at least 1024")
    out: list[tuple[list[InsightInput], dict]] = []
    batch: list[InsightInput] = []
    size = _ENVELOPE_BYTES
    for i, item in enumerate(inputs):
        _check_input(item, i)
        n = row_bytes(item)
        if _ENVELOPE_BYTES + n > max_request_bytes:
            raise ValueError(f"input {i} ({item.key}) alone needs {_ENVELOPE_BYTES + n} bytes; the limit is "
                             f"{max_request_bytes} (resize the image)")
        if batch and (len(batch) >= max_rows or size + n > max_request_bytes):
            out.append((batch, build_request(batch, get_scaling_factor=get_scaling_factor)))
            batch, size = [], _ENVELOPE_BYTES
        batch.append(item)
        size += n
    if batch:
        out.append((batch, build_request(batch, get_scaling_factor=get_scaling_factor)))
    return out


# --- reply -------------------------------------------------------------------------------------------

def _as_matrix(value: Any, where: str) -> np.ndarray:
    if value is None:
        return np.zeros((0, 0), dtype=np.float32)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"MedImageInsight reply: {where} is a string but not JSON") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"MedImageInsight reply: {where} must be a list of vectors, not {type(value).__name__}")
    if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        value = [value]  # one vector on its own
    rows = []
    for i, vec in enumerate(value):
        if isinstance(vec, str):
            try:
                vec = json.loads(vec)
            except ValueError:
                raise ValueError(f"MedImageInsight reply: {where}[{i}] is a string but not JSON") from None
        if not isinstance(vec, (list, tuple)) or not vec or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vec):
            raise ValueError(f"MedImageInsight reply: {where}[{i}] must be a non-empty list of numbers")
        rows.append(vec)
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    dims = {len(r) for r in rows}
    if len(dims) != 1:
        raise ValueError(f"MedImageInsight reply: {where} vectors of different lengths {sorted(dims)}")
    matrix = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"MedImageInsight reply: {where} holds non-finite numbers")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"MedImageInsight reply: {where} holds a zero vector")
    return (matrix / norms).astype(np.float32)


def _merge_rows(body: list) -> dict:
    """A list of per-row objects -> one object with the vectors concatenated in row order."""
    merged: dict[str, Any] = {"image_features": [], "text_features": []}
    for i, row in enumerate(body):
        if isinstance(row, str):
            row = json.loads(row)
        if not isinstance(row, dict):
            raise ValueError(f"MedImageInsight reply: row {i} is {type(row).__name__}, expected an object")
        for key in ("image_features", "text_features"):
            value = row.get(key)
            if value is None or value == []:
                continue
            if isinstance(value, str):
                value = json.loads(value)
            if value and isinstance(value[0], (int, float)):
                value = [value]
            merged[key].extend(value)
        if row.get("scaling_factor") is not None:
            merged["scaling_factor"] = row["scaling_factor"]
    return merged


def parse_response(body: Any, *, n_images: int | None = None, n_texts: int | None = None,
                   dim: int | None = None) -> InsightReply:
    """Vectors and scaling factor of a MedImageInsight reply; ``ValueError`` when it is not one.

    ``n_images`` / ``n_texts`` (the image and text rows sent) and ``dim``, when given, must match.
    """
    for _ in range(3):
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                raise ValueError("MedImageInsight reply: the body is a string but not JSON") from None
    if isinstance(body, list):
        try:
            body = _merge_rows(body)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"MedImageInsight reply: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"MedImageInsight reply: unexpected {type(body).__name__}")
    if "image_features" not in body and "text_features" not in body:
        raise ValueError(f"MedImageInsight reply has neither image_features nor text_features "
                         f"(keys: {sorted(body)[:10]})")
    images = _as_matrix(body.get("image_features"), "image_features")
    texts = _as_matrix(body.get("text_features"), "text_features")
    for name, matrix, expected in (("image_features", images, n_images), ("text_features", texts, n_texts)):
        if expected is not None and matrix.shape[0] != expected:
            raise ValueError(f"MedImageInsight reply: {matrix.shape[0]} {name} vectors for {expected} rows")
        if dim is not None and matrix.shape[0] and matrix.shape[1] != dim:
            raise ValueError(f"MedImageInsight reply: {name} of dimension {matrix.shape[1]}, expected {dim}")
    if images.shape[0] and texts.shape[0] and images.shape[1] != texts.shape[1]:
        raise ValueError("MedImageInsight reply: image and text vectors of different dimensions")
    factor = body.get("scaling_factor")
    if factor is not None:
        try:
            factor = float(factor[0] if isinstance(factor, list) and factor else factor)
        except (TypeError, ValueError):
            raise ValueError(f"MedImageInsight reply: scaling_factor {factor!r} is not a number"[:200]) from None
        if not math.isfinite(factor):
            raise ValueError("MedImageInsight reply: scaling_factor is not finite")
    return InsightReply(image_features=images, text_features=texts, scaling_factor=factor)


# --- zero-shot ---------------------------------------------------------------------------------------

def zero_shot(image: np.ndarray, texts: np.ndarray, scaling_factor: float) -> np.ndarray:
    """Label probabilities ``softmax(exp(scaling_factor) * cos(image, text_k))`` (see the module docstring).

    ``image``: (dim,) or (n, dim); ``texts``: (k, dim). Vectors are normalised here, so raw vectors work too.
    Returns (k,) or (n, k) float64 probabilities summing to 1 per image.
    """
    img = np.atleast_2d(np.asarray(image, dtype=np.float64))
    txt = np.atleast_2d(np.asarray(texts, dtype=np.float64))
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    logits = math.exp(float(scaling_factor)) * (img @ txt.T)
    logits -= logits.max(axis=1, keepdims=True)  # stable softmax
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p[0] if np.asarray(image).ndim == 1 else p
