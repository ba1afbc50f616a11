"""Stored DICOM pixels -> an 8-bit grayscale image as a viewer would display it.

The pipeline of :func:`to_uint8`, in order:

1. Decode one frame with pydicom's pixel decoders (native, RLE, JPEG baseline/extended/lossless, JPEG-LS,
   JPEG 2000 through the pylibjpeg / pyjpegls / Pillow plugins). Anything that cannot be decoded raises
   :class:`PixelConversionError`.
2. Colour images (RGB, YBR_*, PALETTE COLOR) become RGB, then ITU-R BT.601 luma
   ``0.299 R + 0.587 G + 0.114 B`` scaled to 0..255; no VOI applies to them. Steps 3-5 are for monochrome images.
3. Modality LUT: the Modality LUT Sequence (pydicom ``apply_modality_lut``), else Rescale Slope/Intercept.
4. VOI, the first of: the first item of the VOI LUT Sequence; the first Window Center/Width with its VOI LUT
   Function (LINEAR, LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2-3); the 0.5 and 99.5 percentiles of the image
   mapped linearly to 0..255. Enhanced multi-frame objects take these attributes from the frame's functional
   groups (per-frame first, then shared) before the top level.
5. MONOCHROME1 is inverted after rounding, so the output always reads as displayed on a MONOCHROME2 screen:
   white = bright as displayed. (A DX Presentation LUT Shape of INVERSE accompanies MONOCHROME1 and means the same
   inversion, so it is not applied a second time.)

Arithmetic is done in float32 on the one frame, in place where possible.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, convert_color_space, get_decoder

log = logging.getLogger(__name__)

__all__ = ["PixelConversionError", "to_uint8", "window_to_uint8", "percentile_to_uint8", "LOW_PERCENTILE",
           "HIGH_PERCENTILE"]

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# Attributes copied into the per-frame view that the modality and VOI steps read.
_TRANSFORM_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
                       "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")


class PixelConversionError(ValueError):
    """The pixel data of an instance cannot be turned into an image; the message names the SOP Instance UID."""


def to_uint8(ds: Dataset, frame: int = 0) -> np.ndarray:
    """2-D uint8 array (Rows, Columns) for display/model input.

    See the module docstring for the order of the steps. ``frame`` is 0-based.

    Raises:
        PixelConversionError: no or undecodable pixel data, zero rows/columns, a frame out of range, or an
            unsupported photometric interpretation.
    """
    _check_header(ds, frame)
    pixels, photometric = _decode(ds, frame)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        transforms = _frame_transforms(ds, frame)
        values = _modality(pixels, transforms, ds)
        display = np.rint(_voi(values, transforms, ds))
        out = display.astype(np.uint8)
        if photometric == "MONOCHROME1":
            np.subtract(255, out, out=out)
        return out
    return _luminance(pixels, photometric, ds)


def window_to_uint8(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM window (PS3.3 C.11.2.1.2-3) to float ``values`` **in place**, output range 0..255 (float32).

    ``values`` must be a float array; it is returned for convenience.
    """
    function = function.upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width} < 1 is invalid for LINEAR")
        if width == 1:
            # The standard's formula divides by (width - 1): a width of 1 is a threshold at center - 0.5.
            np.copyto(values, np.where(values > center - 0.5, 255.0, 0.0))
            return values
        values -= center - 0.5
        values /= width - 1
        values += 0.5
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} <= 0 is invalid for LINEAR_EXACT")
        values -= center
        values /= width
        values += 0.5
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} <= 0 is invalid for SIGMOID")
        values -= center
        values *= -4.0 / width
        np.exp(values, out=values)
        values += 1.0
        np.reciprocal(values, out=values)
    else:
        raise ValueError(f"unknown VOI LUT Function {function!r}")
    values *= 255.0
    np.clip(values, 0.0, 255.0, out=values)
    return values


def percentile_to_uint8(values: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE) -> np.ndarray:
    """Map the ``low``..``high`` percentiles of float ``values`` linearly to 0..255, **in place** (float32).

    A constant image maps to 0.
    """
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi <= lo:
        values.fill(0.0)
        return values
    values -= lo
    values *= 255.0 / (hi - lo)
    np.clip(values, 0.0, 255.0, out=values)
    return values


# --- steps ---------------------------------------------------------------------------------------------------------


def _describe(ds: Dataset) -> str:
    """How errors name an instance: its SOP Instance UID only (never patient data)."""
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    return f"SOP Instance {uid}" if uid else "an instance without SOP Instance UID"


def _fail(ds: Dataset, why: str) -> PixelConversionError:
    return PixelConversionError(f"{_describe(ds)}: {why}")


def _check_header(ds: Dataset, frame: int) -> None:
    """Refuse what cannot hold a displayable frame, before decoding anything."""
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise _fail(ds, "no Pixel Data element (not an image, or read with stop_before_pixels)")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise _fail(ds, f"Rows={rows!r}, Columns={columns!r}: an image needs both above zero")
    if ds.get("SamplesPerPixel", 1) not in (1, 3):
        raise _fail(ds, f"Samples per Pixel {ds.get('SamplesPerPixel')} is not 1 or 3")
    if not ds.get("PhotometricInterpretation"):
        raise _fail(ds, "no Photometric Interpretation")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric.startswith("MONOCHROME") and ds.get("SamplesPerPixel", 1) != 1:
        raise _fail(ds, f"{photometric} with Samples per Pixel {ds.get('SamplesPerPixel')}: a grey image has 1")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise _fail(ds, f"frame {frame} requested, the instance has {frames} frame(s) (0-based)")
    transfer_syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if not transfer_syntax:
        raise _fail(ds, "no Transfer Syntax UID in the file meta information: cannot tell how pixels are encoded")


def _decode(ds: Dataset, frame: int) -> tuple[np.ndarray, str]:
    """One frame as stored (colour as RGB when the decoder can convert it) and its photometric interpretation."""
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(transfer_syntax)
        pixels, meta = decoder.as_array(ds, index=frame)
    except Exception as exc:  # every decoder/plugin failure must surface as one error type
        name = getattr(transfer_syntax, "name", str(transfer_syntax))
        raise _fail(ds, f"pixel data ({name}) cannot be decoded: {exc}") from exc
    photometric = str(meta.get("photometric_interpretation", ds.PhotometricInterpretation)).strip().upper()
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3):
        raise _fail(ds, f"decoded frame has unexpected shape {pixels.shape}")
    return pixels, photometric


def _frame_transforms(ds: Dataset, frame: int) -> Dataset:
    """The modality/VOI attributes that apply to ``frame``.

    Enhanced multi-frame objects keep them in functional groups (Pixel Value Transformation, Frame VOI LUT):
    the frame's own item wins over the shared one, which wins over the top level.
    """
    view = Dataset()
    for keyword in _TRANSFORM_KEYWORDS:
        if keyword in ds:
            view[keyword] = ds[keyword]
    groups: list[Dataset] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    for group in groups:  # later (per-frame) overrides earlier (shared)
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            items = group.get(sequence)
            if items:
                for element in items[0]:
                    if element.keyword in _TRANSFORM_KEYWORDS:
                        view[element.tag] = element
    return view


def _modality(pixels: np.ndarray, transforms: Dataset, ds: Dataset) -> np.ndarray:
    """Modality LUT output as a new float32 array."""
    if transforms.get("ModalityLUTSequence"):
        try:
            mapped = apply_modality_lut(pixels, _with_encoding(transforms, ds))
        except Exception as exc:
            raise _fail(ds, f"Modality LUT Sequence cannot be applied: {exc}") from exc
        return mapped.astype(np.float32)
    values = pixels.astype(np.float32)
    slope = _first_float(transforms.get("RescaleSlope"))
    intercept = _first_float(transforms.get("RescaleIntercept"))
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    return values


def _voi(values: np.ndarray, transforms: Dataset, ds: Dataset) -> np.ndarray:
    """VOI output 0..255 (float32, may reuse ``values``): VOI LUT Sequence, else window, else percentiles."""
    if transforms.get("VOILUTSequence"):
        return _voi_lut_sequence(values, transforms, ds)
    center = _first_float(transforms.get("WindowCenter"))
    width = _first_float(transforms.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(transforms.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function not in _VOI_FUNCTIONS:
            log.warning("%s: unknown VOI LUT Function %r, using LINEAR", _describe(ds), function)
            function = "LINEAR"
        try:
            return window_to_uint8(values, center, width, function)
        except ValueError as exc:
            # An unusable window is a header defect that viewers ignore; the image itself is still good.
            log.warning("%s: %s; using percentiles instead", _describe(ds), exc)
    return percentile_to_uint8(values)


def _voi_lut_sequence(values: np.ndarray, transforms: Dataset, ds: Dataset) -> np.ndarray:
    """Apply the first VOI LUT (pydicom ``apply_voi``) and scale its output range to 0..255."""
    item = transforms.VOILUTSequence[0]
    try:
        entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 2**16  # PS3.3 C.11.1.1.1: 0 means 65536 entries
        # The LUT indexes integers; clip first so pydicom's uint16 index arithmetic cannot wrap around.
        indices = np.clip(np.rint(values), first_mapped, first_mapped + entries - 1).astype(np.int64)
        mapped = apply_voi(indices, _with_encoding(transforms, ds), index=0)
    except Exception as exc:
        raise _fail(ds, f"VOI LUT Sequence cannot be applied: {exc}") from exc
    # Some writers declare 16 bits per entry but fill only 12: use the range the data actually spans.
    used_bits = max(8, int(mapped.max(initial=0)).bit_length())
    top = float(2 ** min(bits, used_bits) - 1)
    out = mapped.astype(np.float32)
    out *= 255.0 / top
    np.clip(out, 0.0, 255.0, out=out)
    return out


def _luminance(pixels: np.ndarray, photometric: str, ds: Dataset) -> np.ndarray:
    """Colour frame -> uint8 luma (ITU-R BT.601 weights)."""
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(pixels, ds)
        except Exception as exc:
            raise _fail(ds, f"palette colour lookup failed: {exc}") from exc
        top = float(np.iinfo(rgb.dtype).max)
    elif photometric == "RGB" or photometric.startswith("YBR_FULL"):
        rgb = pixels
        if photometric != "RGB":
            # Decoders usually convert already; YBR_FULL_422 is delivered unsubsampled, i.e. as YBR_FULL.
            rgb = convert_color_space(pixels, "YBR_FULL", "RGB")
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    else:
        raise _fail(ds, f"Photometric Interpretation {photometric!r} is not supported")
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise _fail(ds, f"colour frame has unexpected shape {rgb.shape}")
    luma = rgb[..., 0].astype(np.float32) * 0.299
    luma += rgb[..., 1].astype(np.float32) * 0.587
    luma += rgb[..., 2].astype(np.float32) * 0.114
    luma *= 255.0 / top
    np.clip(luma, 0.0, 255.0, out=luma)
    return np.rint(luma).astype(np.uint8)


def _with_encoding(transforms: Dataset, ds: Dataset) -> Dataset:
    """``transforms`` with what pydicom's LUT functions read besides the LUT (endianness of OW LUT Data)."""
    if hasattr(ds, "file_meta"):
        transforms.file_meta = ds.file_meta
    for keyword in ("PixelRepresentation", "BitsStored"):
        if keyword in ds and keyword not in transforms:
            transforms[keyword] = ds[keyword]
    return transforms


def _first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued DS/IS element as float; None when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if not value:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
