"""Emulated CXRReportGen: deterministic "findings" computed from the frontal image's pixels.

Geometry (checkable with :func:`emulate_findings` and :func:`cell_box`): the centre square crop of the frontal
image (side ``c = min(W, H)``, offset ``((W - c) / 2, (H - c) / 2)``, as the real model and Microsoft's sample client
read boxes) is cut into a 3 x 3 grid. Cell ``(row, col)`` covers the normalised box
``(col / 3, row / 3, (col + 1) / 3, (row + 1) / 3)``; a pixel belongs to the cell that holds its centre. The
brightest cell (highest mean) yields an "increased opacity" finding, the darkest an "increased lucency" one, each
with that cell's box. In a frontal (PA or AP) chest image the patient's right is on the image's left, so grid
column 0 is named "right" and column 2 "left"; rows are upper, middle and lower zones.

Text inputs (indication, technique, comparison, prior report) are validated but never echoed: they may hold PHI.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from node.emulator import RequestError

MODEL_NAME = "cxrreportgen"
MODEL_VERSION = "cxrreportgen-emulator-1"
COLUMNS = ("frontal_image", "lateral_image", "prior_image", "indication", "technique", "comparison", "prior_report")
IMAGE_COLUMNS = frozenset({"frontal_image", "lateral_image", "prior_image"})
MAX_ROWS = 10

ROW_NAMES = ("upper", "middle", "lower")
# Image column -> patient side, for a frontal chest image displayed the standard way.
SIDE_NAMES = ("right", "central", "left")

NO_BOX_SENTENCE = "EMULATED: the cardiomediastinal silhouette is emulated, not assessed."
UNIFORM_SENTENCE = "EMULATED: the image is uniform; no focal density difference is emulated."
LATERAL_SENTENCE = "EMULATED: a lateral view was supplied; it is acknowledged, not assessed."
PRIOR_SENTENCE = "EMULATED: a prior frontal image was supplied; no comparison is emulated."


def cell_box(row: int, col: int) -> tuple[float, float, float, float]:
    """The normalised (x_min, y_min, x_max, y_max) of grid cell (row, col) in the centre square crop."""
    return (col / 3, row / 3, (col + 1) / 3, (row + 1) / 3)


def zone_name(row: int, col: int) -> str:
    return f"{SIDE_NAMES[col]} {ROW_NAMES[row]} zone"


def decode_image(data: bytes) -> np.ndarray:
    """A 2-D float array of the image's grey levels (16-bit stays 16-bit; colour is converted to luminance)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.format not in ("PNG", "JPEG"):
                raise RequestError(400, f"image format {img.format} is not supported; send PNG or JPEG")
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(img, dtype=np.float64)
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float64)
    except Image.DecompressionBombError:
        raise RequestError(413, "the image is too large") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(400, f"the image cannot be decoded as PNG or JPEG: {type(exc).__name__}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise RequestError(400, "the image has no pixels")
    return arr


def cell_means(pixels: np.ndarray) -> list[list[float | None]]:
    """Mean grey level of each 3 x 3 cell of the centre square crop (``None`` for a cell holding no pixel centre)."""
    h, w = pixels.shape
    c = min(w, h)
    dx, dy = (w - c) / 2, (h - c) / 2
    centres_x = np.arange(w) + 0.5 - dx  # pixel centres in crop coordinates
    centres_y = np.arange(h) + 0.5 - dy
    means: list[list[float | None]] = []
    for row in range(3):
        in_row = (centres_y >= row * c / 3) & (centres_y < (row + 1) * c / 3)
        out_row: list[float | None] = []
        for col in range(3):
            in_col = (centres_x >= col * c / 3) & (centres_x < (col + 1) * c / 3)
            block = pixels[np.ix_(in_row, in_col)]
            out_row.append(float(block.mean()) if block.size else None)
        means.append(out_row)
    return means


def emulate_findings(png_bytes: bytes, *, lateral: bool = False, prior: bool = False) -> list[list[Any]]:
    """The emulated findings ``[[text, [[x0, y0, x1, y1]] or None], ...]`` for a frontal PNG/JPEG. Pure."""
    means = cell_means(decode_image(png_bytes))
    cells = [(means[r][k], r, k) for r in range(3) for k in range(3) if means[r][k] is not None]
    brightest = max(cells, key=lambda t: t[0])  # first in row-major order on ties
    darkest = min(cells, key=lambda t: t[0])
    findings: list[list[Any]] = []
    if brightest[0] == darkest[0]:
        findings.append([UNIFORM_SENTENCE, None])
    else:
        _, r, k = brightest
        findings.append([f"EMULATED: increased opacity in the {zone_name(r, k)}.", [list(cell_box(r, k))]])
        _, r, k = darkest
        findings.append([f"EMULATED: increased lucency in the {zone_name(r, k)}.", [list(cell_box(r, k))]])
    findings.append([NO_BOX_SENTENCE, None])
    if lateral:
        findings.append([LATERAL_SENTENCE, None])
    if prior:
        findings.append([PRIOR_SENTENCE, None])
    return findings


def _b64_image(value: Any, column: str, row: int) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(400, f"row {row}: {column} must be a non-empty base64 string")
    try:
        return base64.b64decode(value)  # the sample client's encodebytes() adds newlines: they are skipped
    except (binascii.Error, ValueError):
        raise RequestError(400, f"row {row}: {column} is not valid base64") from None


def validate_input(input_data: Any) -> tuple[list[str], list[list[Any]]]:
    """Check ``input_data`` against the documented schema; return (columns, rows)."""
    if not isinstance(input_data, dict):
        raise RequestError(400, "input_data must be an object with columns, index and data")
    columns = input_data.get("columns")
    data = input_data.get("data")
    index = input_data.get("index")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, "input_data.columns must be a list of strings")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise RequestError(400, f"unknown column(s) {unknown}; allowed: {list(COLUMNS)}")
    if len(set(columns)) != len(columns):
        raise RequestError(400, "input_data.columns has duplicates")
    if "frontal_image" not in columns:
        raise RequestError(400, "input_data.columns must include frontal_image")
    if not isinstance(data, list) or not data or not all(isinstance(r, list) for r in data):
        raise RequestError(400, "input_data.data must be a non-empty list of rows (lists)")
    if len(data) > MAX_ROWS:
        raise RequestError(400, f"{len(data)} rows; at most {MAX_ROWS} per request")
    if index is not None:
        if not isinstance(index, list) or len(index) != len(data):
            raise RequestError(400, "input_data.index must be a list with one entry per row of data")
    for i, row in enumerate(data):
        if len(row) != len(columns):
            raise RequestError(400, f"row {i}: {len(row)} values for {len(columns)} columns")
        for column, value in zip(columns, row):
            if column not in IMAGE_COLUMNS and not isinstance(value, str):
                raise RequestError(400, f"row {i}: {column} must be a string")
    return columns, data


class CxrReportGenHandler:
    """The CXRReportGen model for :mod:`node.emulator.server`."""

    name = MODEL_NAME
    model_version = MODEL_VERSION

    def accepts(self, columns: list[str]) -> bool:
        return "frontal_image" in columns

    def score(self, input_data: dict, options: dict[str, Any]) -> Any:
        columns, rows = validate_input(input_data)
        results = []
        for i, row in enumerate(rows):
            values = dict(zip(columns, row))
            images = {c: _b64_image(values[c], c, i) for c in columns if c in IMAGE_COLUMNS}
            for column, data in images.items():
                if column != "frontal_image":
                    decode_image(data)  # the real model refuses an undecodable lateral or prior image too
            results.append(emulate_findings(images["frontal_image"], lateral="lateral_image" in images,
                                            prior="prior_image" in images))
        shape = options.get("response_shape", "rows")
        if shape == "object" and len(results) == 1:
            return {"output": results[0]}  # the product page's form
        return [{"output": json.dumps(r)} for r in results]  # what Microsoft's sample client parses


HANDLER = CxrReportGenHandler()
