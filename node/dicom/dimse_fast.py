"""Byte-level encoders for the two small structures the receive path writes for every instance, and the split of
a P-DATA-TF body into its presentation data values (:func:`split_pdvs`).

pynetdicom builds both with pydicom datasets: the C-STORE response's command set is a ``Dataset`` filled element by
element, encoded once to compute its group length and again to send it; the file meta of each received file is a
``FileMetaDataset`` written with ``write_file_meta_info``. Profiled (py-spy ``--gil``, 512 CT slices, one
association) that was ~12 % of the SCP's Python time per instance for a few hundred bytes. These functions write
the same bytes directly; ``tests/test_dimse_fast.py`` compares them with pydicom's and pynetdicom's own encodings.
:mod:`node.dicom.pynetdicom_patches` uses them only for the common case (a C-STORE response without an error
comment or offending element; file meta with exactly the elements pynetdicom puts in it) and leaves the rest to
pynetdicom.
"""

from __future__ import annotations

import struct

_UINT4 = struct.Struct(">L")
_IMPLICIT = struct.Struct("<HHL")  # group, element, value length (Implicit VR Little Endian)
_US = struct.Struct("<HHLH")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length (Explicit VR Little Endian)

C_STORE_RSP = 0x8001  # CommandField
NO_DATA_SET = 0x0101  # CommandDataSetType: no data set follows


def _uid(value: str) -> bytes:
    """A UI value: ASCII, padded with one NUL to an even length."""
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def c_store_rsp_command(sop_class_uid: str, message_id: int, status: int, sop_instance_uid: str) -> bytes:
    """The encoded command set (Implicit VR Little Endian, with its group length) of a C-STORE response.

    Elements, in tag order: (0000,0000) CommandGroupLength, (0000,0002) AffectedSOPClassUID, (0000,0100)
    CommandField, (0000,0120) MessageIDBeingRespondedTo, (0000,0800) CommandDataSetType, (0000,0900) Status,
    (0000,1000) AffectedSOPInstanceUID.
    """
    cls, inst = _uid(sop_class_uid), _uid(sop_instance_uid)
    body = b"".join((
        _IMPLICIT.pack(0x0000, 0x0002, len(cls)), cls,
        _US.pack(0x0000, 0x0100, 2, C_STORE_RSP),
        _US.pack(0x0000, 0x0120, 2, message_id),
        _US.pack(0x0000, 0x0800, 2, NO_DATA_SET),
        _US.pack(0x0000, 0x0900, 2, status),
        _IMPLICIT.pack(0x0000, 0x1000, len(inst)), inst,
    ))
    return _IMPLICIT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


def file_meta_group(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                    implementation_uid: str, implementation_version: str) -> bytes:
    """The File Meta Information group (Explicit VR Little Endian, with its group length), as
    ``pydicom.filewriter.write_file_meta_info`` writes what ``pynetdicom.dsutils.create_file_meta`` makes."""
    version = implementation_version.encode("ascii")
    if len(version) % 2:
        version += b" "
    body = b"".join((
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2), b"\x00\x01",
        _explicit(0x0002, b"UI", _uid(sop_class_uid)),
        _explicit(0x0003, b"UI", _uid(sop_instance_uid)),
        _explicit(0x0010, b"UI", _uid(transfer_syntax_uid)),
        _explicit(0x0012, b"UI", _uid(implementation_uid)),
        _explicit(0x0013, b"SH", version),
    ))
    return _EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body


def split_pdvs(body: bytearray) -> list[tuple[int, memoryview]] | None:
    """The (context ID, message control header + fragment) items of a P-DATA-TF body, as views into it.

    None when an item is malformed (shorter than 2 bytes or overrunning the PDU): pynetdicom's own decoder
    then handles the PDU, as it always did.
    """
    view = memoryview(body)
    items = []
    offset, end = 0, len(body)
    while offset < end:
        if offset + 6 > end:
            return None
        (length,) = _UINT4.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((body[offset + 4], view[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return items or None
