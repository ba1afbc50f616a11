"""Emulated MedImageParse 3D: a deterministic mask volume computed from the input volume's voxels.

Mask (checkable with :func:`emulate_volume_mask`): the ``.nii.gz`` is read with nibabel (scaling applied). A
CT-like volume (minimum below -500, i.e. air in HU) gets ``mask = voxel > 0`` (HU); any other volume gets
``mask = voxel > median(volume)``. The mask is uint8 0/1 with the input's shape; the returned NIfTI is written
with a copy of the input header, so its shape, qform, sform (codes included) and affine are the input's exactly.
A prompt does not change its mask.

Several prompts joined with ``&`` (the model card sends 15 in one call) are answered, as the card shows, with one
**label map**: voxel value ``n + 1`` for prompt ``n``, 0 outside. A voxel holds one label, so where targets overlap
(here: all of them cover the same mask) the emulator gives voxel column ``i`` to prompt ``(i // 8) % N``
(:func:`label_map`): stripes 8 voxels wide, checkable from the request's pixels.

Reply shapes: by default the documented one, ``[{"nifti_file": "{\\"data\\": \\"<b64 .nii.gz>\\"}"}]``. The earlier
sample's ``[{"image_features": "{\\"data\\": <b64 uint8 buffer>, \\"shape\\": [...], \\"dtype\\": \\"uint8\\"}"}]``
(raw voxels in the input's (i, j, k) order, C order, no affine) when the handler is built with
``reply_form="image_features"`` or when the server's ``response_shape`` is ``"object"`` (configuration, or a
``{"shape": "object"}`` fault for one answer). The variants of :mod:`node.emulator.variants` change the NIfTI's
geometry (``3d-canonical``, ``3d-no-affine``, ``3d-identity``, ``3d-zooms-only``) or answer with a 4-D
``image_features`` array, prompt axis first, one full mask per prompt, and ``text_features`` (``3d-prompt-first``;
``3d-one-prompt``: a prompt axis of 1 whatever was asked). Model version ``medimageparse3d-emulator-1``: emulated,
not clinical.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import zlib
from typing import Any, Literal

import nibabel
import numpy as np

from node.emulator import RequestError
from node.emulator.payload import b64_bytes, validate_input

MODEL_NAME = "medimageparse3d"
MODEL_VERSION = "medimageparse3d-emulator-1"
COLUMNS = ("image", "text")
CT_AIR_BELOW = -500.0  # a volume whose minimum is below this is read as CT in HU
MAX_VOXELS = 512 * 512 * 1024

ReplyForm = Literal["nifti_file", "image_features"]


def load_nifti(nifti_bytes: bytes) -> nibabel.Nifti1Image:
    """``.nii.gz`` (or ``.nii``) bytes -> Nifti1Image; ``RequestError`` 400 when it is not one."""
    data = nifti_bytes
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise RequestError(400, "the image is not a valid gzip (.nii.gz) file") from None
    try:
        image = nibabel.Nifti1Image.from_bytes(data)
        shape = image.shape
    except Exception as exc:  # nibabel raises several types for a bad header
        raise RequestError(400, f"the image is not a NIfTI-1 volume: {type(exc).__name__}") from None
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
        raise RequestError(400, f"the image has shape {list(shape)}; a 3-D volume is expected")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise RequestError(413, f"the volume has {int(np.prod(shape))} voxels; at most {MAX_VOXELS}")
    return image


def threshold_of(voxels: np.ndarray) -> float:
    """0 for CT-like volumes (minimum < -500), else the median."""
    if voxels.size and float(np.min(voxels)) < CT_AIR_BELOW:
        return 0.0
    return float(np.median(voxels)) if voxels.size else 0.0


STRIPE_VOXELS = 8  # label maps: voxel column i goes to prompt (i // 8) % N where the targets overlap


def threshold_mask(image: nibabel.Nifti1Image) -> np.ndarray:
    """The emulated mask of every prompt: uint8 0/1 of the volume's shape (see the module docstring)."""
    try:
        voxels = image.get_fdata(dtype=np.float64)
    except Exception as exc:
        raise RequestError(400, f"the volume's voxels cannot be read: {type(exc).__name__}") from None
    if voxels.ndim == 4:
        voxels = voxels[..., 0]
    return (voxels > threshold_of(voxels)).astype(np.uint8)


def label_map(mask: np.ndarray, n_prompts: int) -> np.ndarray:
    """One label per voxel for ``n_prompts`` overlapping targets: ``1 + (i // 8) % n`` inside ``mask``, else 0."""
    if n_prompts == 1:
        return mask
    owner = 1 + (np.arange(mask.shape[0]) // STRIPE_VOXELS) % n_prompts
    return (mask * owner.astype(np.uint8)[:, None, None]).astype(np.uint8)


def mask_image(image: nibabel.Nifti1Image, data: np.ndarray | None = None) -> nibabel.Nifti1Image:
    """The emulated mask of ``image`` (or ``data``, a label map): same shape, same header geometry and affine."""
    mask = threshold_mask(image) if data is None else data
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, int(mask.max()) if mask.size else 1
    header["descrip"] = b"EMULATED mask"
    if mask.ndim == 3 and len(image.shape) == 4:
        header.set_data_shape(mask.shape)
    return nibabel.Nifti1Image(mask, None, header=header)  # affine None: qform/sform kept from the header


def with_geometry(mask: nibabel.Nifti1Image, variant: str) -> nibabel.Nifti1Image:
    """The mask NIfTI as a deployment variant writes it (see :mod:`node.emulator.variants`)."""
    data = np.asanyarray(mask.dataobj)
    if variant == "3d-canonical":
        return nibabel.as_closest_canonical(nibabel.Nifti1Image(data, mask.header.get_best_affine()))
    if variant == "3d-no-affine":
        out = nibabel.Nifti1Image(data, None)
        out.header.set_qform(None, code=0)
        out.header.set_sform(None, code=0)
        return out
    if variant == "3d-identity":
        return nibabel.Nifti1Image(data, np.eye(4))
    if variant == "3d-zooms-only":
        return nibabel.Nifti1Image(data, np.diag([*mask.header.get_zooms()[:3], 1.0]))
    return mask


def _gzip(raw: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as handle:
        handle.write(raw)
    return buffer.getvalue()


def emulate_volume_mask(nifti_gz_bytes: bytes) -> nibabel.Nifti1Image:
    """The emulated mask volume for a ``.nii.gz`` file (see the module docstring). Pure."""
    return mask_image(load_nifti(nifti_gz_bytes))


def _array(voxels: np.ndarray) -> dict[str, Any]:
    return {"data": base64.b64encode(voxels.tobytes()).decode("ascii"), "shape": list(voxels.shape),
            "dtype": str(voxels.dtype)}


class MedImageParse3DHandler:
    """The MedImageParse 3D model for :mod:`node.emulator.server`.

    ``reply_form``: ``"nifti_file"`` or ``"image_features"`` always; None (default): ``nifti_file`` unless the
    server's ``response_shape`` is ``"object"``.
    """

    name = MODEL_NAME
    model_version = MODEL_VERSION

    def __init__(self, reply_form: ReplyForm | None = None) -> None:
        if reply_form not in (None, "nifti_file", "image_features"):
            raise ValueError(f"reply_form must be 'nifti_file' or 'image_features', got {reply_form!r}")
        self.reply_form = reply_form

    def accepts(self, columns: list[str]) -> bool:
        # ["image", "text"] is also MedImageParse 2D's (and MedImageInsight's): the columns cannot tell them apart,
        # so a bare /score is never dispatched here by columns; use /medimageparse3d/score or the server's model=.
        return False

    def score(self, input_data: dict, options: dict[str, Any]) -> Any:
        rows = validate_input(input_data, max_rows=1, model="MedImageParse 3D (one volume per call)")
        image_b64, text = rows[0]
        prompts = [p.strip() for p in text.split("&")]
        if not text.strip() or any(not p for p in prompts):
            raise RequestError(400, "row 0: the text (target prompt, several joined with '&') has a blank prompt")
        volume = load_nifti(b64_bytes(image_b64, 0))
        mask = threshold_mask(volume)
        variants = options.get("variants") or ()
        if "3d-prompt-first" in variants or "3d-one-prompt" in variants:
            n = 1 if "3d-one-prompt" in variants else len(prompts)
            stack = np.ascontiguousarray(np.broadcast_to(mask, (n, *mask.shape)), dtype=np.uint8)
            return [{"image_features": json.dumps(_array(stack)),
                     "text_features": [text.strip()] if n == 1 else prompts}]
        form = self.reply_form or ("image_features" if options.get("response_shape") == "object" else "nifti_file")
        labels = label_map(mask, len(prompts))
        if form == "image_features":
            return [{"image_features": json.dumps(_array(np.ascontiguousarray(labels, dtype=np.uint8)))}]
        answer = mask_image(volume, labels)
        for variant in variants:
            answer = with_geometry(answer, variant)
        data = base64.b64encode(_gzip(answer.to_bytes())).decode("ascii")
        return [{"nifti_file": json.dumps({"data": data})}]


HANDLER = MedImageParse3DHandler()
