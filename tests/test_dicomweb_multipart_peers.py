"""The node's multipart/related code (node/dicomweb/multipart.py) against the emulated Azure DICOM service's own
(node/emulator/azure_dicom/multipart_io.py: the standard library's MIME parser), and both against bodies written
out by hand as RFC 2046 and PS3.18 lay them out: a framing bug in the client cannot hide behind the same bug in
the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.dicomweb import multipart
from node.emulator.azure_dicom.multipart_io import BodyError, read_related, write_related


def samples(data: Path) -> list[bytes]:
    """Real DICOM files, and bytes that look like line ends and delimiters, at the start and end of a part."""
    files = sorted((data / "cxr").glob("*.dcm"))[:3]
    return [f.read_bytes() for f in files] + [b"\r\n--not-the-boundary\r\n", b"\n\r\r\n", b"ends in CR\r", b""]


HAND_WRITTEN = (
    b"preamble, to be ignored\r\n"
    b"--Xy_1\r\n"
    b"Content-Type: application/dicom\r\n"
    b"\r\n"
    b"DICM first\r\n"
    b"--Xy_1\r\n"
    b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
    b"Content-Location: /v2/studies/1\r\n"
    b"\r\n"
    b"second\r\nwith a CRLF inside\r\n"
    b"--Xy_1--\r\n"
    b"epilogue, to be ignored\r\n"
)
HAND_TYPE = 'multipart/related; type="application/dicom"; boundary="Xy_1"'
HAND_PARTS = [("application/dicom", b"DICM first"), ("application/dicom", b"second\r\nwith a CRLF inside")]


def test_both_readers_read_a_hand_written_body() -> None:
    assert read_related(HAND_WRITTEN, HAND_TYPE) == HAND_PARTS
    assert multipart.decode(HAND_WRITTEN, HAND_TYPE) == HAND_PARTS


def test_what_the_node_writes_the_emulator_reads_byte_for_byte(data: Path) -> None:
    parts = samples(data)
    body, content_type = multipart.encode(parts)
    assert read_related(body, content_type) == [("application/dicom", p) for p in parts]


def test_what_the_emulator_writes_the_node_reads_byte_for_byte(data: Path) -> None:
    parts = samples(data)
    body, content_type = write_related(parts)
    assert multipart.decode(body, content_type) == [("application/dicom", p) for p in parts]
    assert read_related(body, content_type) == [("application/dicom", p) for p in parts]


@pytest.mark.parametrize("body, content_type, why", [
    (HAND_WRITTEN, "multipart/related", "boundary"),
    (HAND_WRITTEN.replace(b"--Xy_1--\r\n", b""), HAND_TYPE, "CloseBoundaryNotFound"),
    (b"no delimiter at all", HAND_TYPE, "StartBoundaryNotFound"),
    (HAND_WRITTEN, 'application/dicom', "multipart/related expected"),
])
def test_the_emulator_refuses_a_malformed_body(body: bytes, content_type: str, why: str) -> None:
    with pytest.raises(BodyError, match=why):
        read_related(body, content_type)


def test_a_writer_that_leaves_out_the_crlf_before_each_delimiter_is_caught() -> None:
    """The shared bug the two peers must not have: the CRLF before ``--boundary`` belongs to the delimiter. A writer
    that omits it glues each part to the next delimiter; a reader written alongside it may not notice."""
    glued = HAND_WRITTEN.replace(b"DICM first\r\n--Xy_1", b"DICM first--Xy_1").replace(
        b"with a CRLF inside\r\n--Xy_1--", b"with a CRLF inside--Xy_1--")
    try:
        got = read_related(glued, HAND_TYPE)
    except BodyError:
        return
    assert got != HAND_PARTS
