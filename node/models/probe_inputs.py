"""Synthetic, PHI-free inputs for ``dicom-node probe``: a drawn chest radiograph and a small drawn CT volume.

Nothing here comes from a patient: the pictures are ellipses of plausible grey levels (air, soft tissue, lung,
bone), made the same way every time. They exercise the request path of each model (PNG encoding, NIfTI geometry)
without sending any real image to an endpoint that is not yet trusted.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from converters.volume import Volume

__all__ = ["chest_png", "ct_volume", "square_png"]


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def chest_png(width: int = 640, height: int = 512) -> bytes:
    """A frontal chest radiograph drawn with ellipses (8-bit grey PNG, no text chunk). Not square on purpose: the
    two box frames of CXRReportGen (centre crop, full image) then map a box to different pixels."""
    h, w = height, width
    img = np.full((h, w), 20.0)
    img[_ellipse(h, w, h * 0.55, w * 0.5, h * 0.48, w * 0.42)] = 170.0  # soft tissue of the thorax
    for side in (0.32, 0.68):
        img[_ellipse(h, w, h * 0.5, w * side, h * 0.33, w * 0.13)] = 55.0  # lungs
    img[_ellipse(h, w, h * 0.62, w * 0.55, h * 0.16, w * 0.11)] = 200.0  # heart
    img[:, int(w * 0.48):int(w * 0.52)] = np.maximum(img[:, int(w * 0.48):int(w * 0.52)], 215.0)  # spine
    img[_ellipse(h, w, h * 0.62, w * 0.3, h * 0.08, w * 0.06)] = 120.0  # an opacity in the right lower zone
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def square_png(size: int = 1024) -> bytes:
    """The chest drawing padded to a square of ``size`` (MedImageParse takes 1024x1024)."""
    with Image.open(io.BytesIO(chest_png(size, int(size * 0.8)))) as img:
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(img, (0, (size - img.height) // 2))
        buf = io.BytesIO()
        canvas.save(buf, format="PNG")
        return buf.getvalue()


def ct_volume(columns: int = 64, rows: int = 56, slices: int = 16) -> Volume:
    """A small axial chest CT in HU (int16): air around a body, two lungs, a spine; voxel (i, j, k) = column,
    row, slice as :func:`converters.volume.series_to_volume` makes them, 0.8 x 0.8 x 5 mm, a scanner-like origin
    far from (0, 0, 0) (so a reply that drops the affine cannot land on the volume by chance)."""
    j, i = np.mgrid[0:rows, 0:columns]
    plane = np.full((rows, columns), -1000.0)
    body = ((i - columns / 2) / (columns * 0.45)) ** 2 + ((j - rows / 2) / (rows * 0.42)) ** 2 <= 1
    plane[body] = 40.0
    for side in (0.3, 0.7):
        lung = ((i - columns * side) / (columns * 0.15)) ** 2 + ((j - rows * 0.45) / (rows * 0.28)) ** 2 <= 1
        plane[lung] = -800.0
    plane[((i - columns / 2) / (columns * 0.06)) ** 2 + ((j - rows * 0.78) / (rows * 0.08)) ** 2 <= 1] = 700.0
    data = np.repeat(plane.T[:, :, None], slices, axis=2).astype(np.int16)  # (i, j, k)
    data[:, :, : max(1, slices // 4)] = np.minimum(data[:, :, : max(1, slices // 4)], 30)  # slices differ
    spacing, step = 0.8, 5.0
    affine_lps = np.array([[spacing, 0, 0, -180.0], [0, spacing, 0, -160.0], [0, 0, step, -320.0], [0, 0, 0, 1]])
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    return Volume(data=data, affine=affine, source_sop_uids=[f"probe-slice-{k}" for k in range(slices)])
