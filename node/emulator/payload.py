"""Request checks and image decoding that several emulated models share (their inputs are alike).

MedImageParse, MedImageParse 3D and MedImageInsight all take ``input_data`` with the columns ``image`` and ``text``
(:func:`validate_input`), a base64 image per row (:func:`b64_bytes`), and the 2D ones a PNG (:func:`luminance`).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from node.emulator import RequestError

COLUMNS = ("image", "text")


def luminance(png_bytes: bytes) -> np.ndarray:
    """(H, W) float luminance of a PNG; ``RequestError`` 400 when it is not one."""
    try:
        with Image.open(io.BytesIO(png_bytes)) as img:
            img.load()
            if img.format != "PNG":
                raise RequestError(400, f"image format {img.format} is not supported; send PNG")
            if img.mode == "L":
                return np.asarray(img, dtype=np.float64)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(img, dtype=np.float64) / 257.0  # 16-bit grey -> the 0..255 scale
            rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    except Image.DecompressionBombError:
        raise RequestError(413, "the image is too large") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(400, f"the image cannot be decoded as PNG: {type(exc).__name__}") from None
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def validate_input(input_data: Any, *, max_rows: int, model: str) -> list[list[str]]:
    """Check ``{"columns": ["image", "text"], "index": [...], "data": [[b64, text], ...]}``; rows as [image, text]."""
    if not isinstance(input_data, dict):
        raise RequestError(400, "input_data must be an object with columns, index and data")
    columns, data, index = input_data.get("columns"), input_data.get("data"), input_data.get("index")
    if not isinstance(columns, list) or sorted(c for c in columns if isinstance(c, str)) != sorted(COLUMNS) \
            or len(columns) != 2:
        raise RequestError(400, f"input_data.columns must be {list(COLUMNS)} (got {columns!r})"[:300])
    if not isinstance(data, list) or not data or not all(isinstance(r, list) for r in data):
        raise RequestError(400, "input_data.data must be a non-empty list of rows (lists)")
    if len(data) > max_rows:
        raise RequestError(400, f"{len(data)} rows; {model} takes at most {max_rows} per request")
    if index is not None and not isinstance(index, (list, int)):
        raise RequestError(400, "input_data.index must be a list (or an integer)")
    rows = []
    for i, row in enumerate(data):
        if len(row) != 2 or not all(isinstance(v, str) for v in row):
            raise RequestError(400, f"row {i}: expected two strings (image, text)")
        values = dict(zip(columns, row))
        rows.append([values["image"], values["text"]])
    return rows


def b64_bytes(value: str, row: int) -> bytes:
    """The bytes of a base64 ``image`` cell; ``RequestError`` 400 when it is empty or not base64."""
    if not value.strip():
        raise RequestError(400, f"row {row}: image must be a non-empty base64 string")
    try:
        return base64.b64decode(value)  # encodebytes() newlines are skipped
    except (binascii.Error, ValueError):
        raise RequestError(400, f"row {row}: image is not valid base64") from None
