"""DICOM frame -> MedImageParse (2D) input: a 1024x1024 lossless RGB PNG, and the geometry to map masks back.

MedImageParse wants the image resized to ``size`` x ``size`` (1024) with its aspect ratio kept and the rest padded
with black (seed document; NOTES "MedImageParse"). Documented choices:

- **Padding is centred**: the resized image sits in the middle of the square, with
  ``offset = (size - resized) // 2`` black model pixels on the left/top (integers, so the image starts on a model
  pixel edge) and the rest on the right/bottom. The seed document and NOTES only say "pad with black"; centring
  (letterboxing) is our choice, not verified against Microsoft's sample code; it keeps the anatomy central, and
  nothing in the model documentation depends on it: what matters is that :class:`SquareTransform` records it exactly.
- **Exact geometry**: ``x = column * scale + offset_x`` and ``y = row * scale + offset_y`` (continuous coordinates,
  origin at the top-left corner of the top-left pixel in both spaces), ``scale = size / max(rows, columns)``.
  The image is resized with Pillow's ``box`` argument so the PNG follows exactly that mapping (the resized extent is
  ``floor(columns * scale)`` x ``floor(rows * scale)`` model pixels; the longer side is exactly ``size``).
- **Masks back**: :meth:`SquareTransform.mask_to_source` samples the model mask (nearest neighbour) at the model
  coordinate of every source pixel CENTRE; the sampling position is clamped to the image region, so padding never
  produces a source pixel and every source pixel gets a value (the far edge of the shorter side may end inside the
  last, partial model pixel, which the PNG leaves black: those source pixels take the image's last model pixel).
- **Grey levels**: CT in HU (Modality CT, monochrome, top-level Rescale Intercept, Rescale Type absent or HU;
  enhanced multi-frame CT keeps its rescale in functional groups and goes the to_uint8 way) gets a CT window
  chosen from the prompt (:func:`choose_ct_window`, or the ``window`` argument); other monochrome images (and CT
  without a matching keyword) go through :func:`converters.pixels.to_uint8` (header VOI LUT / window, else
  0.5-99.5 percentiles; MONOCHROME1 inverted).
- **Colour**: RGB / YBR_* / PALETTE COLOR images stay colour (RGB). Grey images are written as RGB too (R = G = B):
  the model documentation recommends RGB PNGs, and one PNG mode for all inputs keeps the server path uniform.
- Resampling filter: LANCZOS for the image (masks never go through Pillow).
- **Frame selection** (:func:`select_frames`): default ``"middle"``; frames of all instances are put in one list
  sorted by InstanceNumber (then by frame), and the middle one is index ``(n - 1) // 2`` (the lower middle for an
  even count); a single single-frame image gives itself. Also ``"all"``, ``"every:N"`` and ``"instances:3,7"``
  (by InstanceNumber).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from converters.pixels import PixelConversionError, to_uint8

__all__ = [
    "MODEL_SIZE",
    "CT_WINDOWS",
    "SquareTransform",
    "ParseImage",
    "choose_ct_window",
    "to_parse_image",
    "join_prompts",
    "split_prompts",
    "select_frames",
]

MODEL_SIZE = 1024

#: CT windows of the MedImageParse samples, (low, high) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-150.0, 250.0),
    "lung": (-1000.0, 1000.0),
    "pelvis": (-55.0, 200.0),
    "liver": (-25.0, 230.0),
    "colon": (-68.0, 187.0),
    "pancreas": (-100.0, 200.0),
}

#: Prompt keywords -> window name. The keyword that occurs FIRST in the prompt wins; matches are on word starts,
#: so "lungs" and "nodules" match, "colonic" matches colon.
_WINDOW_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("lung", "lung"), ("pulmonary", "lung"), ("nodule", "lung"), ("airway", "lung"), ("pneumo", "lung"),
    ("covid", "lung"), ("bronch", "lung"), ("emphysema", "lung"),
    ("liver", "liver"), ("hepat", "liver"),
    ("pancrea", "pancreas"),
    ("colon", "colon"), ("rectum", "colon"), ("rectal", "colon"), ("bowel", "colon"),
    ("pelvi", "pelvis"), ("bladder", "pelvis"), ("prostate", "pelvis"), ("uter", "pelvis"), ("ovar", "pelvis"),
    ("abdom", "abdomen"), ("kidney", "abdomen"), ("renal", "abdomen"), ("spleen", "abdomen"),
    ("splenic", "abdomen"), ("adrenal", "abdomen"), ("stomach", "abdomen"), ("gallbladder", "abdomen"),
    ("aorta", "abdomen"), ("esophag", "abdomen"), ("duoden", "abdomen"),
)


@dataclass(frozen=True)
class SquareTransform:
    """Source pixel space <-> model (padded square) space. See the module docstring for the conventions."""

    source_rows: int
    source_columns: int
    size: int
    scale: float  # size / max(rows, columns)
    offset_x: float  # black model pixels left of the image (centred padding)
    offset_y: float  # black model pixels above the image

    @classmethod
    def for_shape(cls, rows: int, columns: int, size: int = MODEL_SIZE) -> SquareTransform:
        if rows <= 0 or columns <= 0 or size <= 0:
            raise ValueError(f"bad shape {rows}x{columns} or size {size}")
        scale = size / max(rows, columns)
        width, height = _extent(columns, scale, size), _extent(rows, scale, size)
        return cls(rows, columns, size, scale, float((size - width) // 2), float((size - height) // 2))

    @property
    def image_width(self) -> int:
        """Model pixels covered by the image horizontally (the rest is padding)."""
        return _extent(self.source_columns, self.scale, self.size)

    @property
    def image_height(self) -> int:
        return _extent(self.source_rows, self.scale, self.size)

    def to_model(self, col: float, row: float) -> tuple[float, float]:
        """Continuous source (column, row) -> model (x, y)."""
        return col * self.scale + self.offset_x, row * self.scale + self.offset_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """Continuous model (x, y) -> source (column, row); the inverse of :meth:`to_model`."""
        return (x - self.offset_x) / self.scale, (y - self.offset_y) / self.scale

    def _sample_indices(self, n: int, offset: float, extent: int) -> np.ndarray:
        centres = (np.arange(n, dtype=np.float64) + 0.5) * self.scale + offset
        idx = np.floor(centres).astype(np.int64)
        return np.clip(idx, int(offset), int(offset) + extent - 1)

    def mask_to_source(self, mask: np.ndarray) -> np.ndarray:
        """A (size, size) model mask -> (source_rows, source_columns), nearest neighbour, padding removed.

        Source pixel (r, c) takes the model pixel that contains the model coordinate of its centre
        ``to_model(c + 0.5, r + 0.5)`` (clamped to the image region). The dtype is kept. A leading axis is allowed:
        (n, size, size) -> (n, rows, columns).
        """
        mask = np.asarray(mask)
        if mask.shape[-2:] != (self.size, self.size):
            raise ValueError(f"model mask has shape {mask.shape}, expected (..., {self.size}, {self.size})")
        rows = self._sample_indices(self.source_rows, self.offset_y, self.image_height)
        cols = self._sample_indices(self.source_columns, self.offset_x, self.image_width)
        return mask[..., rows[:, None], cols[None, :]]


def _extent(n: int, scale: float, size: int) -> int:
    """Model pixels covered by ``n`` source pixels: floor(n * scale), robust to float round-off, at most size."""
    return max(1, min(size, math.floor(n * scale + 1e-9)))


@dataclass(frozen=True)
class ParseImage:
    """One model input: the PNG bytes and how to map the model's masks back to the source frame."""

    png: bytes
    transform: SquareTransform
    sop_instance_uid: str
    frame: int  # 0-based frame of the source instance


def choose_ct_window(prompt: str, override: str | tuple[float, float] | None = None) -> tuple[float, float] | None:
    """The CT window (low, high) HU for a prompt; None when the prompt names nothing CT-window-specific.

    ``override``: a name of :data:`CT_WINDOWS` or an explicit (low, high) pair; it wins over the prompt.
    Otherwise the first keyword of the prompt decides (lung/nodule -> lung, liver -> liver, pancreas, colon,
    pelvis/bladder/prostate -> pelvis, abdomen/kidney/spleen/... -> abdomen).
    """
    if override is not None:
        if isinstance(override, str):
            key = override.strip().lower()
            if key not in CT_WINDOWS:
                raise ValueError(f"unknown CT window {override!r}; known: {', '.join(CT_WINDOWS)}")
            return CT_WINDOWS[key]
        low, high = (float(v) for v in override)
        if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
            raise ValueError(f"a CT window is (low, high) with low < high, got {override!r}")
        return low, high
    text = (prompt or "").lower()
    best: tuple[int, str] | None = None
    for keyword, name in _WINDOW_KEYWORDS:
        match = re.search(r"\b" + re.escape(keyword), text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return CT_WINDOWS[best[1]] if best else None


def _is_ct_hu(ds: Dataset) -> bool:
    if str(ds.get("Modality", "")).upper() != "CT":
        return False
    if str(ds.get("PhotometricInterpretation", "")).upper() not in ("MONOCHROME1", "MONOCHROME2"):
        return False
    rescale_type = str(ds.get("RescaleType", "") or "HU").upper()
    return "RescaleIntercept" in ds and rescale_type == "HU"


def _ct_windowed(ds: Dataset, frame: int, window: tuple[float, float]) -> np.ndarray:
    try:
        stored = pixel_array(ds, index=frame)
        hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except Exception as exc:
        raise PixelConversionError(f"SOP Instance {ds.get('SOPInstanceUID', '')}: cannot decode CT: {exc}") from exc
    low, high = window
    hu -= low
    hu *= 255.0 / (high - low)
    np.clip(hu, 0.0, 255.0, out=hu)
    out = np.rint(hu).astype(np.uint8)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        np.subtract(255, out, out=out)
    return out


def _rgb(ds: Dataset, frame: int) -> np.ndarray:
    """A colour frame as uint8 RGB (rows, columns, 3)."""
    photometric = str(ds.PhotometricInterpretation).upper()
    try:
        pixels = pixel_array(ds, index=frame)  # YBR_* converted to RGB by pydicom
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
            top = float(np.iinfo(pixels.dtype).max)
        else:
            top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    except Exception as exc:
        raise PixelConversionError(f"SOP Instance {ds.get('SOPInstanceUID', '')}: cannot decode colour: {exc}") from exc
    if top == 255.0 and pixels.dtype == np.uint8:
        return pixels
    return np.rint(np.clip(pixels.astype(np.float32) * (255.0 / top), 0, 255)).astype(np.uint8)


def to_parse_image(
    ds: pydicom.Dataset,
    *,
    frame: int = 0,
    prompt: str = "",
    window: str | tuple[float, float] | None = None,
    size: int = MODEL_SIZE,
) -> ParseImage:
    """One frame of ``ds`` as MedImageParse input (see the module docstring for every choice)."""
    if ds.get("SamplesPerPixel", 1) == 3 or str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        image = Image.fromarray(_rgb(ds, frame)).convert("RGB")
    else:
        ct_window = choose_ct_window(prompt, window) if _is_ct_hu(ds) else None
        if ct_window is not None:
            grey = _ct_windowed(ds, frame, ct_window)
        else:
            grey = to_uint8(ds, frame)
        image = Image.fromarray(grey).convert("RGB")
    rows, columns = image.height, image.width
    transform = SquareTransform.for_shape(rows, columns, size)
    width, height = transform.image_width, transform.image_height
    box = (0.0, 0.0, width / transform.scale, height / transform.scale)
    box = (0.0, 0.0, min(box[2], float(columns)), min(box[3], float(rows)))
    resized = image.resize((width, height), Image.Resampling.LANCZOS, box=box)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(resized, (int(transform.offset_x), int(transform.offset_y)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return ParseImage(buffer.getvalue(), transform, str(ds.get("SOPInstanceUID", "")), frame)


def join_prompts(prompts: Sequence[str] | str) -> str:
    """Prompts -> MedImageParse's text: sentences joined by " & " (one mask per sentence)."""
    items = split_prompts(prompts) if isinstance(prompts, str) else [p.strip() for p in prompts if p and p.strip()]
    for p in items:
        if "&" in p:
            raise ValueError(f"a prompt may not contain '&' (the model's separator): {p!r}")
    return " & ".join(items)


def split_prompts(text: str) -> list[str]:
    """MedImageParse's text -> prompts: split on "&", stripped, empties dropped."""
    return [part.strip() for part in (text or "").split("&") if part.strip()]


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _instance_number(ds: Dataset) -> float:
    try:
        return float(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return math.inf  # unnumbered instances go last, in path order


def select_frames(instances: list[tuple[Path, pydicom.Dataset]], how: str = "middle") -> list[tuple[Path, int]]:
    """Which frames of a series to send to the 2D model, as (path, 0-based frame).

    All frames of all instances, sorted by InstanceNumber (then path, then frame), then:
    ``"middle"`` (default): the frame at index ``(n - 1) // 2``; ``"all"``: every frame;
    ``"every:N"``: frames 0, N, 2N, ... (N >= 1); ``"instances:3,7"``: every frame of the instances with those
    InstanceNumbers (a number no instance has is ignored). An empty series gives [].
    """
    ordered = sorted(instances, key=lambda item: (_instance_number(item[1]), str(item[0])))
    frames = [(path, f) for path, ds in ordered for f in range(_number_of_frames(ds))]
    how = (how or "middle").strip().lower()
    if not frames:
        return []
    if how == "middle":
        return [frames[(len(frames) - 1) // 2]]
    if how == "all":
        return frames
    match = re.fullmatch(r"every:(\d+)", how)
    if match and int(match.group(1)) >= 1:
        return frames[:: int(match.group(1))]
    match = re.fullmatch(r"instances:(\d+(?:,\d+)*)", how.replace(" ", ""))
    if match:
        wanted = {float(n) for n in match.group(1).split(",")}
        keep = {str(path) for path, ds in ordered if _instance_number(ds) in wanted}
        return [(path, f) for path, f in frames if str(path) in keep]
    raise ValueError(f"unknown frame selection {how!r}: use 'middle', 'all', 'every:N' (N >= 1) or "
                     f"'instances:N[,N...]'")
