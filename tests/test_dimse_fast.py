"""node.dicom.dimse_fast writes exactly the bytes pynetdicom and pydicom write for the same values.

The expected bytes come from pynetdicom's own message encoding and pydicom's file meta writer, never from the
module under test.
"""

from __future__ import annotations

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta

from node.dicom import dimse_fast

CT = "1.2.840.10008.5.1.4.1.1.2"
UIDS = [CT, "1.2.840.10008.5.1.4.1.1.88.22", "1.2.3", "1.23"]  # even and odd lengths


def _pynetdicom_rsp(sop_class: str, msg_id: int, status: int, sop_inst: str) -> bytes:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_inst
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 0))
    ((_, pdv),) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"  # one command fragment, the last
    return pdv[1:]


@pytest.mark.parametrize("sop_class", UIDS)
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC000, 0xB007])
def test_c_store_response_matches_pynetdicom(sop_class: str, status: int) -> None:
    for msg_id, inst in ((1, generate_uid()), (65535, "1.2.3.4"), (7, "1.2.3.45")):
        assert dimse_fast.c_store_rsp_command(sop_class, msg_id, status, inst) == _pynetdicom_rsp(
            sop_class, msg_id, status, inst)


@pytest.mark.parametrize("sop_class", UIDS)
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, JPEG2000Lossless, "1.2.840.10008.1.2"])
def test_file_meta_matches_pydicom(sop_class: str, ts: str) -> None:
    for inst in (generate_uid(), "1.2.3", "1.2.34"):
        fp = DicomBytesIO()
        write_file_meta_info(fp, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=inst,
                                                  transfer_syntax=ts))
        expected = fp.getvalue()
        assert dimse_fast.file_meta_group(sop_class, inst, ts, PYNETDICOM_IMPLEMENTATION_UID,
                                          PYNETDICOM_IMPLEMENTATION_VERSION) == expected
        odd = dimse_fast.file_meta_group(sop_class, inst, ts, "1.2.3", "ODD")
        fp = DicomBytesIO()
        write_file_meta_info(fp, create_file_meta(sop_class_uid=sop_class, sop_instance_uid=inst, transfer_syntax=ts,
                                                  implementation_uid="1.2.3", implementation_version="ODD"))
        assert odd == fp.getvalue()


def test_p_data_items_split_as_pynetdicom_decodes_them() -> None:
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from node.dicom.dimse_fast import split_pdvs

    pdvs = [(1, b"\x03" + b"c" * 11), (3, b"\x00" + bytes(range(256)) * 40), (3, b"\x02" + b"x")]
    primitive = P_DATA()
    primitive.presentation_data_value_list = [list(p) for p in pdvs]
    encoded = P_DATA_TF(primitive).encode()
    expected = P_DATA_TF()
    expected.decode(encoded)
    got = split_pdvs(bytearray(encoded[6:]))
    assert got is not None
    assert [(c, bytes(d)) for c, d in got] == list(expected.to_primitive().presentation_data_value_list)
    # malformed: an item shorter than its header says, or with no control header -> pynetdicom's own path
    assert split_pdvs(bytearray(encoded[6:-1])) is None
    assert split_pdvs(bytearray(b"\x00\x00\x00\x01\x01")) is None
    assert split_pdvs(bytearray()) is None
