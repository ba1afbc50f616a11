"""What a scoring request carried, column by column, for the emulator's request log.

Tests use it to check the node's egress: images leave as pixels only (PNG or NIfTI, never a DICOM file with its
header; no PNG text chunks) and free text is what the scrubber left. Image columns are summarised (kind, size,
PNG chunk types), text columns by length and SHA-256 (the log holds no text).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import struct
from typing import Any



def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order (IHDR, IDAT..., IEND; tEXt/iTXt/zTXt would carry text)."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append(kind.decode("latin-1"))
        pos += 12 + length
    return out


def _kind(raw: bytes) -> str:
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if raw[128:132] == b"DICM" or raw[:4] == b"DICM":
        return "dicom"
    if raw.startswith(b"\x1f\x8b"):
        try:
            head = _gunzip_head(raw)
        except (OSError, EOFError):
            return "gzip"
        return "nifti.gz" if head[344:348] in (b"n+1\x00", b"ni1\x00") else "gzip"
    if raw.startswith(b"\xff\xd8"):
        return "jpeg"
    return "binary"


def _gunzip_head(raw: bytes, n: int = 348) -> bytes:
    """The first ``n`` bytes of a gzip stream (a NIfTI-1 header), without inflating the whole volume."""
    import io

    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as handle:
        return handle.read(n)


def describe_value(value: Any) -> dict[str, Any]:
    """One cell of ``input_data.data``: an image (by its magic bytes) or text."""
    if isinstance(value, str) and len(value) >= 64:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if raw:
            kind = _kind(raw)
            doc: dict[str, Any] = {"kind": kind, "bytes": len(raw)}
            if kind == "png":
                doc["png_chunks"] = sorted(set(png_chunks(raw)))
                if len(raw) >= 24:
                    doc["shape"] = list(struct.unpack(">II", raw[16:24]))  # IHDR: width, height
            if kind == "nifti.gz":
                doc["nifti_text"] = _nifti_text(raw)
                doc["shape"] = _nifti_shape(raw)
            return doc
    if isinstance(value, str):
        # The log never keeps the text itself (it may be PHI a test wants to find elsewhere): its length and
        # SHA-256 let a test check exactly what was sent.
        return {"kind": "text", "chars": len(value), "sha256": hashlib.sha256(value.encode("utf-8")).hexdigest()}
    return {"kind": type(value).__name__}


def _nifti_text(raw: bytes) -> dict[str, str]:
    head = _gunzip_head(raw)
    fields = {"descrip": (148, 80), "aux_file": (228, 24), "intent_name": (328, 16), "db_name": (14, 18)}
    return {k: head[o:o + n].split(b"\x00")[0].decode("latin-1") for k, (o, n) in fields.items()}


def _nifti_shape(raw: bytes) -> list[int]:
    head = _gunzip_head(raw)
    order = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
    dims = struct.unpack(order + "8h", head[40:56])
    return [int(d) for d in dims[1:1 + max(0, min(7, dims[0]))]]


def pixels_of(description: dict[str, Any]) -> int:
    """Pixels (voxels) of an image cell described by :func:`describe_value`; 0 for text."""
    n = 1
    for d in description.get("shape") or [0]:
        n *= max(int(d), 1)
    return n if description.get("shape") else 0


def describe_payload(input_data: Any) -> list[dict[str, Any]] | None:
    """Per row, ``{column: description}`` for ``input_data`` (None when it is not the documented shape)."""
    if not isinstance(input_data, dict) or not isinstance(input_data.get("columns"), list):
        return None
    columns = [str(c) for c in input_data["columns"]]
    rows = input_data.get("data")
    if not isinstance(rows, list):
        return None
    return [{c: describe_value(v) for c, v in zip(columns, row)} for row in rows if isinstance(row, list)]
