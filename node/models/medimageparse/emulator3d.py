"""Emulated MedImageParse 3D: a deterministic mask volume computed from the input volume's voxels.

Mask (checkable with :func:`emulate_volume_mask`): the ``.nii.gz`` is read with nibabel (scaling applied). A
CT-like volume (minimum below -500, i.e. air in HU) gets ``mask = voxel > 0`` (HU); any other volume gets
``mask = voxel > median(volume)``. The mask is uint8 0/1 with the input's shape; the returned NIfTI is written
with a copy of the input header, so its shape, qform, sform (codes included) and affine are the input's exactly.
The prompt is validated but does not change the mask.

Reply shapes: by default the documented one, ``[{"nifti_file": "{\\"data\\": \\"<b64 .nii.gz>\\"}"}]``. The earlier
sample's ``[{"image_features": "{\\"data\\": <b64 uint8 buffer>, \\"shape\\": [...], \\"dtype\\": \\"uint8\\"}"}]``
(raw voxels in the input's (i, j, k) order, C order, no affine) when the handler is built with
``reply_form="image_features"`` or when the server's ``response_shape`` is ``"object"`` (configuration, or a
``{"shape": "object"}`` fault for one answer). Model version ``medimageparse3d-emulator-1``: emulated, not clinical.
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


def mask_image(image: nibabel.Nifti1Image) -> nibabel.Nifti1Image:
    """The emulated mask of ``image``: same shape, same header geometry and affine."""
    try:
        voxels = image.get_fdata(dtype=np.float64)
    except Exception as exc:
        raise RequestError(400, f"the volume's voxels cannot be read: {type(exc).__name__}") from None
    mask = (voxels > threshold_of(voxels)).astype(np.uint8)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, 1
    header["descrip"] = b"EMULATED mask"
    return nibabel.Nifti1Image(mask, None, header=header)  # affine None: qform/sform kept from the header


def _gzip(raw: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as handle:
        handle.write(raw)
    return buffer.getvalue()


def emulate_volume_mask(nifti_gz_bytes: bytes) -> nibabel.Nifti1Image:
    """The emulated mask volume for a ``.nii.gz`` file (see the module docstring). Pure."""
    return mask_image(load_nifti(nifti_gz_bytes))


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
        image_b64, prompt = rows[0]
        if not prompt.strip():
            raise RequestError(400, "row 0: the text (target prompt) is blank")
        mask = emulate_volume_mask(b64_bytes(image_b64, 0))
        form = self.reply_form or ("image_features" if options.get("response_shape") == "object" else "nifti_file")
        if form == "image_features":
            voxels = np.ascontiguousarray(np.asanyarray(mask.dataobj, dtype=np.uint8))
            features = {"data": base64.b64encode(voxels.tobytes()).decode("ascii"), "shape": list(voxels.shape),
                        "dtype": "uint8"}
            return [{"image_features": json.dumps(features)}]
        data = base64.b64encode(_gzip(mask.to_bytes())).decode("ascii")
        return [{"nifti_file": json.dumps({"data": data})}]


HANDLER = MedImageParse3DHandler()
