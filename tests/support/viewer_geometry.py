"""Where OHIF draws things, and what the screenshot holds there.

OHIF 3.13.2 exposes cornerstone3D as ``window.cornerstone`` (its cornerstone extension does, for debugging). The
viewer's own image-to-canvas transform is read from the page: image pixel (column, row) -> patient/world coordinates
(``cornerstone.utilities.imageToWorldCoords``, from the image's own position and spacing) -> canvas CSS pixels
(``viewport.worldToCanvas``, the camera: zoom, pan, fit-to-window) -> page CSS pixels (the canvas's bounding box).
Screenshots are read as RGB arrays at ``devicePixelRatio`` screen pixels per CSS pixel.

Expected positions come from outside the viewer and the node (the emulator's answer, the CT's own pixels, the DICOM
file the PACS holds); the page only supplies the transform, and the screenshot is what is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: An (R, G, B) int array -> bool array: is this pixel of the colour looked for?
ColourTest = Callable[[np.ndarray], np.ndarray]

_VIEWPORT_JS = """
const el = document.querySelector('[data-cy=viewport-pane][data-is-active=true] [data-viewport-uid]')
  || document.querySelector('[data-viewport-uid]');
if (!el || !window.cornerstone) return null;
const enabled = cornerstone.getEnabledElement(el);
if (!enabled || !enabled.viewport) return null;
return enabled;
"""

VIEWPORT_STATE_JS = "const enabled = (() => {" + _VIEWPORT_JS + """})();
if (!enabled) return null;
const vp = enabled.viewport;
const r = vp.canvas.getBoundingClientRect();
return {imageId: vp.getCurrentImageId ? vp.getCurrentImageId() : null, type: vp.type, zoom: vp.getZoom(),
        canvas: [r.left, r.top, r.width, r.height], ratio: window.devicePixelRatio || 1};
"""

#: Whether the active viewport has drawn an image (its actor exists once the first image is loaded).
IMAGE_DRAWN_JS = "const enabled = (() => {" + _VIEWPORT_JS + """})();
if (!enabled) return false;
const vp = enabled.viewport;
return !!(vp.getCurrentImageId && vp.getCurrentImageId() && vp.getImageData && vp.getImageData());
"""

IMAGE_TO_PAGE_JS = "const enabled = (() => {" + _VIEWPORT_JS + """})();
const [points] = arguments;
const vp = enabled.viewport;
const id = vp.getCurrentImageId();
const r = vp.canvas.getBoundingClientRect();
return {imageId: id, points: points.map(p => {
  const c = vp.worldToCanvas(cornerstone.utilities.imageToWorldCoords(id, p));
  return [r.left + c[0], r.top + c[1]];
})};
"""

ZOOM_JS = "const enabled = (() => {" + _VIEWPORT_JS + """})();
const [zoom] = arguments;
enabled.viewport.setZoom(zoom);
enabled.viewport.render();
return enabled.viewport.getZoom();
"""

#: For ``execute_async_script(JUMP_ASYNC_JS, index)``: show slice ``index`` (0-based); answers true or the error.
JUMP_ASYNC_JS = "const enabled = (() => {" + _VIEWPORT_JS + """})();
const [index, done] = [arguments[0], arguments[arguments.length - 1]];
cornerstone.utilities.jumpToSlice(enabled.viewport.element, {imageIndex: index})
  .then(() => done(true), e => done(String(e)));
"""


def yellow(px: np.ndarray) -> np.ndarray:
    """cornerstone3D's default annotation colour, rgb(255, 255, 0), also blended over a grey image."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (r > 150) & (g > 150) & (np.minimum(r, g) - b > 60) & (np.abs(r - g) < 60)


def green(px: np.ndarray) -> np.ndarray:
    """OHIF's SR-preview annotation colour, rgb(0, 255, 0), also blended over a grey image."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (g > 120) & (g - np.maximum(r, b) > 60)


def reddish(px: np.ndarray) -> np.ndarray:
    """A red segment colour over a greyscale image: red clearly above green and blue, green and blue alike."""
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return (r - g > 30) & (r - b > 30) & (np.abs(g - b) < 40)


@dataclass(frozen=True)
class Shot:
    """A screenshot as an RGB int array, with the CSS-to-screen pixel ratio."""

    path: Path
    pixels: np.ndarray
    ratio: float

    @classmethod
    def read(cls, path: Path, ratio: float) -> Shot:
        return cls(path, np.asarray(Image.open(path).convert("RGB")).astype(int), float(ratio))

    def colour_at(self, points: np.ndarray, test: ColourTest, radius: int = 0) -> np.ndarray:
        """For each page CSS point, whether a pixel within ``radius`` screen pixels has the colour."""
        h, w = self.pixels.shape[:2]
        mask = test(self.pixels)
        xy = np.rint(np.asarray(points, dtype=float) * self.ratio).astype(int)
        out = np.zeros(len(xy), dtype=bool)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                x, y = xy[:, 0] + dx, xy[:, 1] + dy
                inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
                out[inside] |= mask[y[inside], x[inside]]
        return out


def segment_points(a: Sequence[float], b: Sequence[float], margin: float = 0.12, step: float = 1.0) -> np.ndarray:
    """Page points every ``step`` CSS pixels along the segment a-b, leaving out ``margin`` of its length at each end
    (corners hold handles and the neighbouring edge)."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = max(2, int(np.linalg.norm(b_ - a_) * (1 - 2 * margin) / step))
    t = np.linspace(margin, 1 - margin, n)
    return a_ + (b_ - a_) * t[:, None]


def edge_coverage(shot: Shot, corners: Sequence[Sequence[float]], test: ColourTest,
                  radius: int = 2) -> list[float]:
    """For each edge of the closed polygon ``corners`` (page CSS points), the fraction of its points drawn in the
    colour (within ``radius`` screen pixels)."""
    pts = list(corners)
    return [float(shot.colour_at(segment_points(pts[i], pts[(i + 1) % len(pts)]), test, radius).mean())
            for i in range(len(pts))]


def inside_canvas(points: Sequence[Sequence[float]], canvas: Sequence[float], margin: float = 4.0) -> bool:
    """Whether every page point lies in the canvas rectangle (left, top, width, height), ``margin`` CSS px in."""
    left, top, width, height = canvas
    return all(left + margin <= x <= left + width - margin and top + margin <= y <= top + height - margin
               for x, y in points)


def rectangle_corners(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    """The four corners (image column, row) of an axis-aligned box, clockwise from the top left."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def to_page(driver: Any, image_points: Sequence[Sequence[float]]) -> tuple[str, list[list[float]]]:
    """The page CSS positions of image (column, row) points in the active viewport, and the image shown there."""
    got = driver.execute_script(IMAGE_TO_PAGE_JS, [list(map(float, p)) for p in image_points])
    return got["imageId"], got["points"]


def _shifted_any(mask: np.ndarray, r: int, combine: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 pad: bool) -> np.ndarray:
    h, w = mask.shape
    padded = np.pad(mask, r, constant_values=pad)
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out = combine(out, padded[r + dy:r + dy + h, r + dx:r + dx + w])
    return out


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose whole (2r+1)-square neighbourhood is in ``mask`` (outside the image counts as in)."""
    return _shifted_any(mask.astype(bool), r, np.logical_and, True)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels with a ``mask`` pixel in their (2r+1)-square neighbourhood."""
    return _shifted_any(mask.astype(bool), r, np.logical_or, False)


def pixel_centres_to_page(driver: Any, rows: int, columns: int, where: np.ndarray,
                          limit: int = 4000) -> np.ndarray:
    """Page CSS positions of the centres of the image pixels in ``where`` (a (rows, columns) bool array), at most
    ``limit`` of them (a fixed-seed sample). The image-to-page map of a 2-D view is affine: three corners fix it."""
    _, (origin, right, down) = to_page(driver, [[0, 0], [columns, 0], [0, rows]])
    o = np.asarray(origin, dtype=float)
    ex = (np.asarray(right, dtype=float) - o) / columns
    ey = (np.asarray(down, dtype=float) - o) / rows
    r, c = np.nonzero(where)
    if len(r) > limit:
        pick = np.random.default_rng(0).choice(len(r), limit, replace=False)
        r, c = r[pick], c[pick]
    return o + (c[:, None] + 0.5) * ex + (r[:, None] + 0.5) * ey
