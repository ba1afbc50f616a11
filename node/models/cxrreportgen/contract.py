"""The CXRReportGen request and reply, as documented and as Microsoft's sample client sees them.

Request::

    {"input_data": {"columns": ["frontal_image", "lateral_image", "indication", ...],
                    "index": [0],
                    "data": [[<b64 PNG>, <b64 PNG>, "text", ...]]}}

Only the inputs given are sent, in the documented order (:data:`COLUMNS`).

Reply: a list of findings ``[[sentence, [[x_min, y_min, x_max, y_max], ...] or null], ...]`` wrapped either as
``{"output": [...]}`` (the product page) or as rows ``[{"output": "<JSON string of the list>"}]`` (what the
sample client parses with ``json.loads(json.loads(body)[0]["output"])``). :func:`parse_response` accepts all of
them. Boxes are normalised to the centre square crop of the frontal image (the sample client's reading) or, by
configuration, to the whole image: :func:`denormalize_box`.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

COLUMNS: tuple[str, ...] = (
    "frontal_image",
    "lateral_image",
    "prior_image",
    "indication",
    "technique",
    "comparison",
    "prior_report",
)
IMAGE_COLUMNS = frozenset({"frontal_image", "lateral_image", "prior_image"})
BOX_TOLERANCE = 1e-4  # coordinates this far outside [0, 1] are float noise and clamped; further is an error

Box = tuple[float, float, float, float]
BoxReference = Literal["center_crop", "full_image"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


@dataclass(frozen=True)
class RawFinding:
    text: str
    boxes: tuple[Box, ...]  # normalised (x_min, y_min, x_max, y_max) as the model returned them (clamped to [0, 1])


# --- request -----------------------------------------------------------------------------------------

def _image_b64(name: str, data: bytes) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be the bytes of a PNG (or JPEG) file, not {type(data).__name__}")
    data = bytes(data)
    if not (data.startswith(_PNG_SIGNATURE) or data.startswith(_JPEG_SIGNATURE)):
        raise ValueError(f"{name} is neither a PNG nor a JPEG file (the formats CXRReportGen accepts)")
    return base64.b64encode(data).decode("ascii")


def build_request(*, frontal_png: bytes, lateral_png: bytes | None = None, prior_png: bytes | None = None,
                  indication: str | None = None, technique: str | None = None, comparison: str | None = None,
                  prior_report: str | None = None) -> dict:
    """The scoring payload for one study. ``None`` or blank text inputs are left out, as are missing images."""
    values: dict[str, str] = {"frontal_image": _image_b64("frontal_png", frontal_png)}
    if lateral_png is not None:
        values["lateral_image"] = _image_b64("lateral_png", lateral_png)
    if prior_png is not None:
        values["prior_image"] = _image_b64("prior_png", prior_png)
    for column, text in (("indication", indication), ("technique", technique), ("comparison", comparison),
                         ("prior_report", prior_report)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise TypeError(f"{column} must be a string, not {type(text).__name__}")
        if text.strip():
            values[column] = text
    columns = [c for c in COLUMNS if c in values]
    return {"input_data": {"columns": columns, "index": [0], "data": [[values[c] for c in columns]]}}


# --- reply -------------------------------------------------------------------------------------------

def _loads(value: Any, where: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"CXRReportGen reply: {where} is a string but not valid JSON: {exc}") from None


def _findings_list(body: Any) -> list:
    """Unwrap every known envelope down to the list of ``[text, boxes]`` pairs."""
    for _ in range(4):  # strings inside strings, rows, {"output": ...}: at most a few levels
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8")
        if isinstance(body, str):
            body = _loads(body, "the body")
            continue
        if isinstance(body, dict):
            if "output" not in body:
                raise ValueError(f"CXRReportGen reply: an object without 'output' (keys: {sorted(body)[:10]})")
            output = body["output"]
            if isinstance(output, str):
                output = _loads(output, "'output'")
            if not isinstance(output, list):
                raise ValueError(f"CXRReportGen reply: 'output' is {type(output).__name__}, expected a list of findings")
            return output
        if isinstance(body, list):
            if not body:
                raise ValueError("CXRReportGen reply: an empty list (no rows)")
            if all(isinstance(row, dict) for row in body):
                if len(body) != 1:
                    raise ValueError(f"CXRReportGen reply: {len(body)} rows; one study is sent, one row expected")
                body = body[0]
                continue
            if all(isinstance(item, (list, tuple)) for item in body):
                return body  # a bare list of findings
            raise ValueError("CXRReportGen reply: a list that is neither rows ({'output': ...}) nor findings")
        raise ValueError(f"CXRReportGen reply: unexpected {type(body).__name__}")
    raise ValueError("CXRReportGen reply: nested too deeply")


def _coordinate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {value!r}, not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where} is {value}, not a finite number")
    if value < -BOX_TOLERANCE or value > 1 + BOX_TOLERANCE:
        raise ValueError(f"{where} is {value}, outside [0, 1]")
    return min(1.0, max(0.0, value))


def _box(raw: Any, where: str) -> Box:
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise ValueError(f"{where} must be 4 numbers [x_min, y_min, x_max, y_max], got {raw!r}"[:300])
    x0, y0, x1, y1 = (_coordinate(v, f"{where} {n}") for v, n in zip(raw, ("x_min", "y_min", "x_max", "y_max")))
    if x0 > x1:
        raise ValueError(f"{where}: x_min {x0} > x_max {x1}")
    if y0 > y1:
        raise ValueError(f"{where}: y_min {y0} > y_max {y1}")
    return (x0, y0, x1, y1)


def parse_response(body: Any) -> list[RawFinding]:
    """The findings of a CXRReportGen reply, in any of the shapes seen; ``ValueError`` when it is not one."""
    findings = _findings_list(body)
    out: list[RawFinding] = []
    for i, item in enumerate(findings, start=1):
        where = f"CXRReportGen reply: finding {i}"
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError(f"{where} must be [text, boxes or null], got {item!r}"[:300])
        text, boxes = item
        if not isinstance(text, str):
            raise ValueError(f"{where}: the text is {type(text).__name__}, not a string")
        if boxes is None:
            parsed: tuple[Box, ...] = ()
        elif isinstance(boxes, (list, tuple)):
            parsed = tuple(_box(b, f"{where}, box {j}") for j, b in enumerate(boxes, start=1))
        else:
            raise ValueError(f"{where}: boxes must be a list of boxes or null, got {type(boxes).__name__}")
        out.append(RawFinding(text=text, boxes=parsed))
    return out


# --- geometry ----------------------------------------------------------------------------------------

def denormalize_box(box: tuple[float, float, float, float] | list[float], png_width: int, png_height: int,
                    reference: BoxReference = "center_crop") -> tuple[float, float, float, float]:
    """Pixel coordinates (x_min, y_min, x_max, y_max) in the PNG that was sent; floats, no rounding.

    ``center_crop``: the box is normalised to the centre square of side ``c = min(W, H)``:
    ``x = x_n * c + (W - c) / 2``, ``y = y_n * c + (H - c) / 2``. ``full_image``: ``x = x_n * W``, ``y = y_n * H``.
    Coordinates are continuous: 0 is the top/left edge of the first pixel, W the right edge of the last.
    """
    if png_width <= 0 or png_height <= 0:
        raise ValueError(f"image size must be positive, got {png_width}x{png_height}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if reference == "center_crop":
        c = min(png_width, png_height)
        dx = (png_width - c) / 2
        dy = (png_height - c) / 2
        return (x0 * c + dx, y0 * c + dy, x1 * c + dx, y1 * c + dy)
    if reference == "full_image":
        return (x0 * png_width, y0 * png_height, x1 * png_width, y1 * png_height)
    raise ValueError(f"reference must be 'center_crop' or 'full_image', got {reference!r}")
