"""The MedImageParse 3D request and reply, as the model document (seed 002) shows them.

Request: one volume per call (the endpoint wrapper ignores ``index``; it is 0)::

    {"input_data": {"columns": ["image", "text"], "index": [0], "data": [[<b64 .nii.gz>, "pancreas"]]}}

Reply, two shapes seen (:func:`parse_response` takes both):

* documented: ``[{"nifti_file": "{\\"data\\": \\"<b64 .nii.gz>\\"}"}]`` (``nifti_file`` is a stringified JSON
  object; an object is accepted too). The mask NIfTI carries its own affine, which is kept as it is (Microsoft's
  sample keeps only ``get_fdata()``; we do not).
* an earlier sample: ``[{"image_features": ...}]``. Its exact content is not in the document; accepted are a
  NIfTI file (``{"data": <b64 .nii(.gz)>}``) and, like MedImageParse 2D, a raw array
  ``{"data": <b64 numpy buffer>, "shape": [...], "dtype": "..."}`` in the input's voxel (i, j, k) order, which gets
  the request's affine (``affine=``; the identity when none is given).

Several prompts in one call (the model card joins 15 with ``&``): :func:`read_reply` says how the reply holds them,
:meth:`MaskReply.per_prompt` splits them: a 3-D **label map** (the card lists the labels of one NIfTI: value
``n + 1`` for prompt ``n``), a 4-D array with the **prompt axis first** ``(N, i, j, k)`` (an unmerged Microsoft
branch's ``image_features``, with ``text_features``), or a NIfTI whose 4th axis holds the prompts. A reply whose
prompt axis does not match the prompts sent is reported (None), so the caller can ask again one prompt per call.

Size: a managed online endpoint refuses bodies over its limit; :func:`check_request_size` says so before sending.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

import nibabel
import numpy as np

from node.models.medimageparse.contract2d import _loads_lenient, decode_array

COLUMNS: tuple[str, str] = ("image", "text")
# Azure ML managed online endpoints cap the request body (documented quota: 100 MB; the real deployment may be
# lower). Our JSON body is ~4/3 of the .nii.gz plus a few bytes.
MAX_REQUEST_BYTES = 100 * 1024 * 1024

_GZIP_MAGIC = b"\x1f\x8b"


# --- request -----------------------------------------------------------------------------------------

def request_size(nifti_gz_len: int, prompt: str) -> int:
    """The exact size of :func:`build_request`'s compact JSON body for a volume of ``nifti_gz_len`` bytes."""
    b64_len = 4 * ((nifti_gz_len + 2) // 3)
    empty = json.dumps(_payload("", prompt), separators=(",", ":")).encode("utf-8")
    return len(empty) + b64_len


def check_request_size(payload_bytes: int, limit: int = MAX_REQUEST_BYTES) -> None:
    """``ValueError`` when a body of ``payload_bytes`` is over the endpoint's ``limit``."""
    if payload_bytes > limit:
        raise ValueError(f"MedImageParse 3D request of {payload_bytes} bytes ({payload_bytes / 2**20:.1f} MiB) "
                         f"exceeds the endpoint's limit of {limit} bytes ({limit / 2**20:.1f} MiB): "
                         f"the volume is too large to send (crop or resample it)")


def _payload(image_b64: str, prompt: str) -> dict:
    return {"input_data": {"columns": list(COLUMNS), "index": [0], "data": [[image_b64, prompt]]}}


def build_request(nifti_gz: bytes, prompt: str, *, max_request_bytes: int | None = MAX_REQUEST_BYTES) -> dict:
    """The scoring payload for one volume (``.nii.gz`` bytes) and one target prompt (e.g. ``"pancreas"``).

    ``ValueError`` when the body would exceed ``max_request_bytes`` (None: no check).
    """
    if not isinstance(nifti_gz, (bytes, bytearray, memoryview)):
        raise TypeError(f"nifti_gz must be the bytes of a .nii.gz file, not {type(nifti_gz).__name__}")
    nifti_gz = bytes(nifti_gz)
    if not nifti_gz.startswith(_GZIP_MAGIC):
        raise ValueError("nifti_gz is not gzip-compressed (MedImageParse 3D takes a .nii.gz file)")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, not {type(prompt).__name__}")
    prompt = prompt.strip()
    if not prompt:
        raise ValueError("the prompt is blank")
    if max_request_bytes is not None:
        check_request_size(request_size(len(nifti_gz), prompt), max_request_bytes)
    return _payload(base64.b64encode(nifti_gz).decode("ascii"), prompt)


# --- reply -------------------------------------------------------------------------------------------

def nifti_from_bytes(data: bytes, where: str = "MedImageParse 3D reply") -> nibabel.Nifti1Image:
    """A ``.nii`` or ``.nii.gz`` file's bytes -> Nifti1Image (header and affine as stored)."""
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{where}: the gzip data is corrupt: {exc}") from None
    try:
        image = nibabel.Nifti1Image.from_bytes(data)
    except Exception as exc:  # nibabel raises several types for a bad header
        raise ValueError(f"{where}: not a NIfTI-1 file: {type(exc).__name__}: {exc}"[:300]) from None
    expected = int(np.prod(image.shape, dtype=np.int64)) * image.get_data_dtype().itemsize
    if len(data) < int(image.header["vox_offset"]) + expected:
        raise ValueError(f"{where}: the NIfTI file is truncated ({len(data)} bytes for shape {list(image.shape)})")
    return image


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty base64 string")
    try:
        return base64.b64decode(value)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not valid base64") from None


def _row(body: Any) -> dict:
    for _ in range(4):
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8")
        if isinstance(body, str):
            body = _loads_lenient(body, "MedImageParse 3D reply: the body")
            continue
        if isinstance(body, dict):
            return body
        if isinstance(body, list):
            if len(body) != 1:
                raise ValueError(f"MedImageParse 3D reply: {len(body)} rows; one volume is sent, one row expected")
            body = body[0]
            continue
        raise ValueError(f"MedImageParse 3D reply: unexpected {type(body).__name__}")
    raise ValueError("MedImageParse 3D reply: nested too deeply")


def _as_object(value: Any, where: str) -> dict:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = _loads_lenient(value, where)
    if not isinstance(value, dict):
        raise ValueError(f"{where} is {type(value).__name__}, expected an object (or its JSON string)")
    return value


def parse_response(body: Any, *, affine: np.ndarray | None = None,
                   expected_shape: tuple[int, ...] | None = None) -> nibabel.Nifti1Image:
    """The mask volume of a MedImageParse 3D reply (either shape); ``ValueError`` when it is not one.

    A returned NIfTI keeps its own header and affine. A raw array (``image_features`` with shape/dtype) has none:
    it gets ``affine`` (the request volume's), else the identity. ``expected_shape`` (the input's spatial shape),
    when given, must match the mask's first three dimensions.
    """
    row = _row(body)
    if "nifti_file" in row:
        where = "MedImageParse 3D reply: nifti_file"
        inner = _as_object(row["nifti_file"], where)
        if "data" not in inner:
            raise ValueError(f"{where} has no data (keys: {sorted(inner)[:10]})")
        image = nifti_from_bytes(_b64(inner["data"], f"{where} data"), where)
    elif "image_features" in row:
        where = "MedImageParse 3D reply: image_features"
        inner = _as_object(row["image_features"], where)
        if "shape" in inner or "dtype" in inner:
            array = np.array(decode_array(inner, where))  # a writable copy
            if array.ndim not in (3, 4):
                raise ValueError(f"{where}: an array of shape {list(array.shape)}; expected a 3-D volume")
            if array.dtype == np.bool_:
                array = array.astype(np.uint8)
            aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
            if aff.shape != (4, 4):
                raise ValueError(f"affine must be 4x4, got {aff.shape}")
            image = nibabel.Nifti1Image(array, aff)
            image.header.set_qform(aff, code=1)
            image.header.set_sform(aff, code=1)
        elif "data" in inner:
            image = nifti_from_bytes(_b64(inner["data"], f"{where} data"), where)
        else:
            raise ValueError(f"{where} has neither data nor shape (keys: {sorted(inner)[:10]})")
    else:
        raise ValueError(f"MedImageParse 3D reply: a row without nifti_file or image_features "
                         f"(keys: {sorted(row)[:10]})")
    if expected_shape is not None and tuple(image.shape[:3]) != tuple(expected_shape[:3]):
        raise ValueError(f"MedImageParse 3D reply: a mask of shape {list(image.shape)} for a volume of shape "
                         f"{list(expected_shape)}")
    return image


# --- reply, with its prompt axis ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskReply:
    """A MedImageParse 3D reply as answered: the voxels, their affine if any, and where the prompts are.

    ``affine`` is None for a raw array (no NIfTI header); ``declared`` says whether a NIfTI's qform or sform code
    is set (codes 0: no affine, whatever nibabel derives from the voxel sizes). ``prompt_axis``: ``"none"`` (3-D),
    ``"first"`` (4-D array ``(N, i, j, k)``), ``"last"`` (a NIfTI ``(i, j, k, N)``).
    """

    form: str  # nifti_file | image_features (NIfTI) | image_features (array)
    data: np.ndarray
    affine: np.ndarray | None
    declared: bool
    prompt_axis: str
    text_features: list | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:4]) if self.prompt_axis == "first" else tuple(self.data.shape[:3])

    def labels(self) -> list[int]:
        """The distinct non-zero values of a 3-D mask (a label map's labels), at most 64."""
        if self.prompt_axis != "none":
            return []
        values = np.unique(self.data)
        return [int(v) if float(v).is_integer() else float(v) for v in values if v != 0][:64]

    def per_prompt(self, n: int) -> list[np.ndarray] | None:
        """One 3-D mask per prompt of ``n`` sent, or None when the reply's prompt axis does not match ``n``."""
        if self.text_features is not None and len(self.text_features) != n:
            return None
        if self.prompt_axis == "first":
            return [self.data[p] for p in range(n)] if self.data.shape[0] == n else None
        if self.prompt_axis == "last":
            return [self.data[..., p] for p in range(n)] if self.data.shape[3] == n else None
        if n == 1:
            return [self.data]
        labels = self.labels()
        if any(not isinstance(v, int) or not 1 <= v <= n for v in labels):
            return None  # not a label map of these prompts (probabilities, 255, more labels than prompts)
        return [(self.data == p + 1).astype(np.uint8) for p in range(n)]


def read_reply(body: Any) -> MaskReply:
    """The mask(s) of a MedImageParse 3D reply, as answered (see :class:`MaskReply`); ``ValueError`` when it holds
    none. Unlike :func:`parse_response`, nothing is assumed about the geometry: that is the caller's to check."""
    row = _row(body)
    text = row.get("text_features")
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except ValueError:
            text = [text]
    text = list(text) if isinstance(text, (list, tuple)) else None
    if "nifti_file" in row:
        where = "MedImageParse 3D reply: nifti_file"
        form = "nifti_file"
        inner = _as_object(row["nifti_file"], where)
    elif "image_features" in row:
        where = "MedImageParse 3D reply: image_features"
        form = "image_features (NIfTI)"
        inner = _as_object(row["image_features"], where)
        if "shape" in inner or "dtype" in inner:
            array = np.array(decode_array(inner, where))
            if array.ndim not in (3, 4):
                raise ValueError(f"{where}: an array of shape {list(array.shape)}; expected 3-D, or 4-D with the "
                                 f"prompt axis first")
            if array.dtype == np.bool_:
                array = array.astype(np.uint8)
            return MaskReply("image_features (array)", array, None, False, "first" if array.ndim == 4 else "none",
                             text)
    else:
        raise ValueError(f"MedImageParse 3D reply: a row without nifti_file or image_features "
                         f"(keys: {sorted(row)[:10]})")
    if "data" not in inner:
        raise ValueError(f"{where} has no data (keys: {sorted(inner)[:10]})")
    image = nifti_from_bytes(_b64(inner["data"], f"{where} data"), where)
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise ValueError(f"{where}: a volume of shape {list(data.shape)}; expected 3-D (or 4-D, one per prompt)")
    declared = int(image.header["qform_code"]) > 0 or int(image.header["sform_code"]) > 0
    return MaskReply(form, data, np.asarray(image.affine, dtype=np.float64), declared,
                     "last" if data.ndim == 4 else "none", text)


def joined(prompts: list[str]) -> str:
    """Prompts as one text, as the model card sends them: ``"a & b & c"``."""
    return " & ".join(p.strip() for p in prompts)
