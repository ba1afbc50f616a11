"""multipart/related bodies as the emulated Azure DICOM service reads and writes them, apart from the node's
client code (:mod:`node.dicomweb.multipart`): a bug in the client's framing is not hidden by the same bug here.

Reading is the standard library's MIME parser (:mod:`email`, RFC 2046: delimiters only at the start of a line, the
CRLF before each one belongs to it, preamble and epilogue ignored); a body it finds defects in (no boundary, no
start or close delimiter) is refused. Writing puts a preamble before the first part and quotes the boundary, as
RFC 2046 allows and servers do, so the client's reader meets more than its own writer's layout.
"""

from __future__ import annotations

import secrets
from email import policy
from email.parser import BytesParser
from typing import Iterable

__all__ = ["BodyError", "read_related", "write_related"]

PREAMBLE = b"This is a multi-part message in MIME format (DICOMweb, emulated).\r\n"


class BodyError(ValueError):
    """A request body that is not a well-formed multipart/related message."""


def read_related(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(media type, content) of each part of a multipart/related ``body`` with the request's ``content_type``."""
    head = b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    msg = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if msg.get_content_type() != "multipart/related":
        raise BodyError(f"multipart/related expected, not {msg.get_content_type()}")
    if not msg.get_boundary():
        raise BodyError("the Content-Type has no boundary")
    defects = [type(d).__name__ for part in msg.walk() for d in part.defects]
    if defects:
        raise BodyError(f"malformed multipart body: {', '.join(defects)}")
    parts = [(part.get_content_type(), part.get_payload(decode=True) or b"") for part in msg.iter_parts()]
    if not parts:
        raise BodyError("no parts in the multipart body")
    return parts


def write_related(parts: Iterable[bytes], media_type: str = "application/dicom") -> tuple[bytes, str]:
    """(body, Content-Type header) of a multipart/related message of ``parts``, each of ``media_type``."""
    boundary = f"emulated-azure-{secrets.token_hex(16)}"
    chunks = [PREAMBLE]
    for data in parts:
        chunks += [b"--", boundary.encode(), b"\r\nContent-Type: ", media_type.encode(), b"\r\n\r\n", data, b"\r\n"]
    chunks += [b"--", boundary.encode(), b"--\r\n"]
    return b"".join(chunks), f'multipart/related; type="{media_type}"; boundary="{boundary}"'
