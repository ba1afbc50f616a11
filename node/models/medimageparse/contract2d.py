"""The MedImageParse (2D) request and reply, as the model document (seed 002) shows them.

Request (one row per image, all rows share the columns)::

    {"input_data": {"columns": ["image", "text"],
                    "index": [0, 1, ...],
                    "data": [[<b64 PNG>, "prompt 1 & prompt 2"], ...]}}

The image is a 1024x1024 PNG (aspect kept, black padding: :mod:`converters.parse2d`); the text holds the prompts
joined by ``" & "`` (one mask per prompt, :func:`converters.parse2d.join_prompts`).

Reply: one row per image, ``[{"image_features": ..., "text_features": ...}, ...]``. ``image_features`` is a JSON
string ``{"data": <b64 numpy buffer>, "shape": [n_prompts, 1024, 1024], "dtype": "uint8"}`` (the product page's
example writes it with single quotes, so a Python-literal string is accepted too); ``text_features`` is one of the
16 categories per prompt, as a list or as a (JSON or Python-literal) string of a list. :func:`parse_response`
decodes each row into a :class:`ParseResult`; a mask of the wrong shape, dtype or count is a ``ValueError``.
The masks are in model space (1024x1024, padded): mapping them back to the source pixels is the caller's job
(:class:`converters.parse2d.SquareTransform`).
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters.parse2d import MODEL_SIZE, join_prompts, split_prompts

COLUMNS: tuple[str, str] = ("image", "text")
MAX_ROWS = 256  # the document's "index: 0 - 256"; keep it in the dozens in practice (payload size)
ACCEPTED_DTYPES = ("uint8", "bool")  # bool masks are turned into 0/255 uint8

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ParseResult:
    """The reply for one image: ``masks`` (n_prompts, H, W) uint8 in model space, one category per prompt."""

    masks: np.ndarray
    categories: list[str]


# --- request -----------------------------------------------------------------------------------------

def build_request(images: Sequence[bytes], prompts: Sequence[str]) -> dict:
    """The scoring payload: one row ``[b64 PNG, "p1 & p2 & ..."]`` per image, the same prompts for each."""
    if isinstance(images, (bytes, bytearray, memoryview)):
        raise TypeError("images must be a sequence of PNG files (bytes), not one bytes object")
    images = list(images)
    if not images:
        raise ValueError("at least one image is needed")
    if len(images) > MAX_ROWS:
        raise ValueError(f"{len(images)} images; at most {MAX_ROWS} per request")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings (one mask each), not one string")
    text = join_prompts(list(prompts))
    if not text:
        raise ValueError("at least one non-blank prompt is needed")
    rows = []
    for i, data in enumerate(images):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"image {i} must be the bytes of a PNG file, not {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(_PNG_SIGNATURE):
            raise ValueError(f"image {i} is not a PNG file (the format MedImageParse accepts)")
        rows.append([base64.b64encode(data).decode("ascii"), text])
    return {"input_data": {"columns": list(COLUMNS), "index": list(range(len(rows))), "data": rows}}


# --- reply -------------------------------------------------------------------------------------------

def _loads_lenient(value: str, where: str) -> Any:
    """JSON, else a Python literal (the product page's example uses single quotes)."""
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError(f"MedImageParse reply: {where} is a string but neither JSON nor a Python literal") from None


def _rows(body: Any) -> list[dict]:
    for _ in range(4):
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8")
        if isinstance(body, str):
            body = _loads_lenient(body, "the body")
            continue
        if isinstance(body, dict):
            body = [body]  # one row on its own
        if isinstance(body, list):
            if not body:
                raise ValueError("MedImageParse reply: an empty list (no rows)")
            rows = []
            for i, row in enumerate(body):
                if isinstance(row, (bytes, bytearray)):
                    row = row.decode("utf-8")
                if isinstance(row, str):  # "a list of JSON-formatted strings"
                    row = _loads_lenient(row, f"row {i}")
                if isinstance(row, dict) and "image_features" not in row and isinstance(
                        row.get("segmentation_object"), (dict, str)):
                    inner = row["segmentation_object"]
                    row = _loads_lenient(inner, f"row {i} segmentation_object") if isinstance(inner, str) else inner
                if not isinstance(row, dict):
                    raise ValueError(f"MedImageParse reply: row {i} is {type(row).__name__}, expected an object")
                rows.append(row)
            return rows
        raise ValueError(f"MedImageParse reply: unexpected {type(body).__name__}")
    raise ValueError("MedImageParse reply: nested too deeply")


def decode_array(features: Any, where: str) -> np.ndarray:
    """``{"data": b64, "shape": [...], "dtype": "..."}`` (object or string) -> the numpy array. Checks sizes."""
    if isinstance(features, (bytes, bytearray)):
        features = features.decode("utf-8")
    if isinstance(features, str):
        features = _loads_lenient(features, where)
    if not isinstance(features, dict):
        raise ValueError(f"{where} is {type(features).__name__}, expected an object with data, shape, dtype")
    missing = [k for k in ("data", "shape", "dtype") if k not in features]
    if missing:
        raise ValueError(f"{where} lacks {missing} (keys: {sorted(features)[:10]})")
    data, shape, dtype_name = features["data"], features["shape"], features["dtype"]
    if not isinstance(data, str):
        raise ValueError(f"{where}: data must be a base64 string, not {type(data).__name__}")
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r}"[:300])
    try:
        dtype = np.dtype(str(dtype_name))
    except TypeError:
        raise ValueError(f"{where}: dtype {dtype_name!r} is not a numpy dtype") from None
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: data is not valid base64") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{where}: {len(raw)} bytes of data for shape {list(shape)} {dtype} ({expected} expected)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _categories(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        parsed = _loads_lenient(value, where) if value.strip().startswith(("[", "(")) else split_prompts(value)
        value = [parsed] if isinstance(parsed, str) else parsed
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise ValueError(f"{where} must be a list of strings, got {value!r}"[:300])
    return [c.strip() for c in value]


def parse_response(body: Any, *, n_prompts: int | None = None, n_images: int | None = None,
                   size: int = MODEL_SIZE) -> list[ParseResult]:
    """The masks and categories per image of a MedImageParse reply; ``ValueError`` when it is not one.

    Each mask stack must be (n, ``size``, ``size``) uint8 (bool is accepted and turned into 0/255), with one
    category per mask. ``n_prompts`` / ``n_images``, when given, must match the masks per row and the rows.
    """
    rows = _rows(body)
    if n_images is not None and len(rows) != n_images:
        raise ValueError(f"MedImageParse reply: {len(rows)} rows for {n_images} images")
    out: list[ParseResult] = []
    for i, row in enumerate(rows):
        where = f"MedImageParse reply: row {i}"
        if "image_features" not in row:
            raise ValueError(f"{where} has no image_features (keys: {sorted(row)[:10]})")
        masks = decode_array(row["image_features"], f"{where} image_features")
        if masks.dtype.name not in ACCEPTED_DTYPES:
            raise ValueError(f"{where}: masks of dtype {masks.dtype}; expected one of {ACCEPTED_DTYPES}")
        if masks.ndim != 3 or masks.shape[1:] != (size, size):
            raise ValueError(f"{where}: masks of shape {list(masks.shape)}; expected [n_prompts, {size}, {size}]")
        if n_prompts is not None and masks.shape[0] != n_prompts:
            raise ValueError(f"{where}: {masks.shape[0]} masks for {n_prompts} prompts")
        masks = (masks.astype(np.uint8) * 255) if masks.dtype == np.bool_ else masks.copy()  # writable, own memory
        categories = _categories(row.get("text_features", []), f"{where} text_features")
        if len(categories) != masks.shape[0]:
            raise ValueError(f"{where}: {len(categories)} categories (text_features) for {masks.shape[0]} masks")
        out.append(ParseResult(masks=masks, categories=categories))
    return out
