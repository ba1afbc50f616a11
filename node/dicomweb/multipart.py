"""multipart/related bodies (PS3.18 8.6.1.2): building STOW-RS requests, reading WADO-RS and STOW-RS bodies."""

from __future__ import annotations

import uuid
from email.message import Message
from typing import Iterable

DICOM_MEDIA = "application/dicom"


class MultipartError(ValueError):
    """A body that is not a readable multipart/related message."""


def encode(parts: Iterable[bytes], media_type: str = DICOM_MEDIA) -> tuple[bytes, str]:
    """(body, Content-Type header) of a multipart/related message of ``parts``, each of ``media_type``."""
    boundary = f"dicomnode-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{media_type}"; boundary={boundary}'


def content_type_params(header: str) -> tuple[str, dict[str, str]]:
    """(media type in lower case, parameters) of a Content-Type header (quoted values unquoted)."""
    msg = Message()
    msg["Content-Type"] = header
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    return msg.get_content_type(), params


def decode(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The (media type, content) of each part of a multipart/related ``body``; :class:`MultipartError` if none."""
    media, params = content_type_params(content_type)
    boundary = params.get("boundary")
    if not media.startswith("multipart/") or not boundary:
        raise MultipartError(f"not a multipart body with a boundary: {media}")
    delimiter = b"--" + boundary.encode()
    sections = body.split(delimiter)
    parts: list[tuple[str, bytes]] = []
    for section in sections[1:]:
        if section.startswith(b"--"):
            break  # the close delimiter
        head, sep, content = section.partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError("a part has no header/body separator")
        if content.endswith(b"\r\n"):
            content = content[:-2]  # the CRLF belongs to the next delimiter
        part_type = DICOM_MEDIA
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-type":
                part_type = value.strip().split(";")[0].lower()
        parts.append((part_type, content))
    if not parts:
        raise MultipartError("no parts in the multipart body")
    return parts
