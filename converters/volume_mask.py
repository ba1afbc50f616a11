"""A mask volume answered by MedImageParse 3D -> back onto the voxel grid of the volume that was sent.

The reply's affine is trusted when it is one (:func:`affine_kind`): the request's own, a reorientation of the same
grid, or a resampling that covers the volume. Microsoft's sample reads the mask by voxel order
(``get_fdata()``) and throws the affine away, and deployments answer without a usable one: no affine at all
(qform and sform codes 0), the identity, the voxel sizes only, or a raw array. Such a mask whose voxel shape equals
the request's is placed by voxel order (:func:`place_mask`); one of another shape cannot be placed and is a
:class:`VolumeError`.
"""

from __future__ import annotations

import numpy as np

from converters.volume import Volume
from converters.volume_header import VolumeError

__all__ = ["GRID_TOLERANCE_VOXELS", "USABLE_KINDS", "affine_kind", "mask_on_volume", "place_mask"]

#: How far (in voxels) the mask grid may sit from the volume grid and still count as the same grid.
GRID_TOLERANCE_VOXELS = 1e-3


def mask_on_volume(mask_data: np.ndarray, mask_affine: np.ndarray, volume: Volume) -> np.ndarray:
    """A mask volume (with its own affine) resampled onto ``volume``'s voxel grid, nearest neighbour.

    The model may answer in another voxel order than it was sent (a reoriented, flipped or cropped mask): every
    voxel ``(i, j, k)`` of ``volume`` takes the mask voxel whose centre is nearest to the same world point,
    ``round(inv(mask_affine) @ volume.affine @ (i, j, k, 1))``. A mask that does not cover the whole volume (a
    reply of the wrong shape or geometry) is a :class:`VolumeError`, not a partial answer. The usual case,
    a mask on the very grid of the request, is returned as it is (a copy). ``mask_data`` is 3-D, or 4-D with one
    volume in its last axis. The result has ``volume.data.shape`` and the mask's dtype.
    """
    data = np.asarray(mask_data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"a mask volume must be 3-D, got shape {list(np.shape(mask_data))}")
    mask_affine = np.asarray(mask_affine, dtype=np.float64)
    if mask_affine.shape != (4, 4) or not np.all(np.isfinite(mask_affine)) or abs(np.linalg.det(mask_affine)) < 1e-12:
        raise VolumeError("the mask's affine is not an invertible 4x4 matrix")
    shape = volume.data.shape[:3]
    to_mask = np.linalg.inv(mask_affine) @ volume.affine  # volume voxel -> mask voxel
    if data.shape == shape and np.allclose(to_mask, np.eye(4), atol=GRID_TOLERANCE_VOXELS):
        return data.copy()
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    landed = np.rint((corners @ to_mask.T)[:, :3])
    if np.any(landed < 0) or np.any(landed > np.asarray(data.shape) - 1):
        raise VolumeError(f"the mask (shape {list(data.shape)}) does not cover the {list(shape)} volume it was asked "
                          f"for: a reply of the wrong shape or geometry")
    out = np.zeros(shape, dtype=data.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    plane = np.stack([ii.ravel(), jj.ravel()], axis=0).astype(np.float64)  # (2, n) of this slice's (i, j)
    rotation, shift = to_mask[:3, :3], to_mask[:3, 3]
    in_plane = rotation[:, :2] @ plane
    for k in range(shape[2]):
        coords = np.rint(in_plane + (rotation[:, 2] * k + shift)[:, None]).astype(np.int64)
        inside = np.all((coords >= 0) & (coords < np.asarray(data.shape)[:, None]), axis=0)
        values = np.zeros(plane.shape[1], dtype=data.dtype)
        values[inside] = data[coords[0, inside], coords[1, inside], coords[2, inside]]
        out[:, :, k] = values.reshape(shape[0], shape[1])
    return out


#: Affine kinds whose mask is placed by its affine (the others fall back to voxel order).
USABLE_KINDS = ("input", "reoriented", "resampled")
AFFINE_TOLERANCE_MM = 1e-3


def _covers(to_mask: np.ndarray, shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> bool:
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    landed = np.rint((corners @ to_mask.T)[:, :3])
    return bool(np.all(landed >= 0) and np.all(landed <= np.asarray(mask_shape[:3]) - 1))


def affine_kind(mask_shape: tuple[int, ...], mask_affine: np.ndarray | None, declared: bool,
                volume: Volume) -> str:
    """How a reply's mask is positioned, relative to the request ``volume``:

    ``input`` (the request's affine and shape), ``reoriented`` (the same grid with its axes permuted or flipped),
    ``resampled`` (another grid that covers the volume): usable. ``none`` (a raw array, or a NIfTI with qform and
    sform codes 0), ``identity``, ``zooms-only`` (diagonal voxel sizes, no direction or origin), ``mismatch`` (an
    affine that does not put the mask over the volume): not usable.
    """
    if mask_affine is None or not declared:
        return "none"
    aff = np.asarray(mask_affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff)) < 1e-12:
        return "none"
    shape = tuple(volume.data.shape[:3])
    if tuple(mask_shape[:3]) == shape and np.allclose(aff, volume.affine, atol=AFFINE_TOLERANCE_MM):
        return "input"
    if np.allclose(aff, np.eye(4), atol=AFFINE_TOLERANCE_MM):
        return "identity"
    rotation = aff[:3, :3]
    if np.allclose(rotation, np.diag(np.diag(rotation)), atol=AFFINE_TOLERANCE_MM) \
            and np.allclose(aff[:3, 3], 0, atol=AFFINE_TOLERANCE_MM):
        return "zooms-only"  # voxel sizes, no direction cosines, no origin: written without the request's header
    to_mask = np.linalg.inv(aff) @ volume.affine
    if not _covers(to_mask, shape, mask_shape):
        return "mismatch"
    linear = to_mask[:3, :3]
    signed_permutation = np.allclose(np.abs(linear).sum(axis=0), 1, atol=GRID_TOLERANCE_VOXELS) and np.allclose(
        np.abs(linear), np.rint(np.abs(linear)), atol=GRID_TOLERANCE_VOXELS)
    return "reoriented" if signed_permutation else "resampled"


def place_mask(mask_data: np.ndarray, mask_affine: np.ndarray | None, declared: bool,
               volume: Volume) -> tuple[np.ndarray, str, str]:
    """(the mask on ``volume``'s grid, its :func:`affine_kind`, how it was placed: ``"affine"`` or
    ``"voxel order"``). A mask without a usable affine is placed by voxel order when its shape equals the
    request's; otherwise :class:`VolumeError` says why it cannot be placed."""
    data = np.asarray(mask_data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    kind = affine_kind(data.shape, mask_affine, declared, volume)
    if kind in USABLE_KINDS:
        return mask_on_volume(data, np.asarray(mask_affine, dtype=np.float64), volume), kind, "affine"
    shape = tuple(volume.data.shape[:3])
    if data.ndim == 3 and tuple(data.shape) == shape:
        return data.copy(), kind, "voxel order"
    raise VolumeError(f"the mask (shape {list(data.shape)}) does not cover the {list(shape)} volume it was asked "
                      f"for (its affine: {kind}) and has not its shape: a reply of the wrong shape or geometry")
