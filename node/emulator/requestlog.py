"""The emulator's request log: one entry per ``/score`` request, made on arrival and completed when answered.

An entry holds no secret and no PHI: the Authorization header only as a fingerprint, the values of row 0 only as
SHA-256 digests, and the payload as described by :func:`node.emulator.inspect.describe_payload`.
"""

from __future__ import annotations

import hashlib
import json
from email.message import Message
from typing import Any

from node.emulator.inspect import describe_payload

__all__ = ["LOG_LIMIT", "REPLY_LIMIT", "fingerprint", "new_entry", "record_input", "record_reply"]

LOG_LIMIT = 10_000  # request log entries kept (a long benchmark run must not grow memory without bound)
REPLY_LIMIT = 64 * 1024  # a JSON reply up to this many bytes is kept in its entry (CXRReportGen's are ~1 KiB)


def fingerprint(authorization: str | None) -> str | None:
    """A short, non-reversible tag of an Authorization header value (the log never holds the secret)."""
    if not authorization:
        return None
    return hashlib.sha256(authorization.encode("utf-8")).hexdigest()[:12]


def new_entry(path: str, headers: Message, raw: bytes, received: float) -> dict[str, Any]:
    """The log entry of a /score request as it arrives (``state`` "in_progress"; no model, status or fault yet)."""
    return {
        "path": path,
        "model": None,
        "columns": None,
        "rows": None,
        "digests": None,
        "headers": {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"},
        "authorization": fingerprint(headers.get("Authorization")),
        "body_size": len(raw),
        "time": received,
        "status": None,
        "state": "in_progress",
        "fault": None,
        "elapsed_ms": None,
        "variants": [],
        "reply": None,
        "reply_bytes": None,
    }


def record_input(entry: dict[str, Any], input_data: Any) -> None:
    """Add what ``input_data`` carried to ``entry`` when it has the documented shape (a ``columns`` list): columns,
    row count, SHA-256 digests of row 0's values and the payload summary."""
    if isinstance(input_data, dict) and isinstance(input_data.get("columns"), list):
        entry["columns"] = [str(c) for c in input_data["columns"]]
        if isinstance(input_data.get("data"), list):
            entry["rows"] = len(input_data["data"])
            first = input_data["data"][0] if input_data["data"] else None
            if isinstance(first, list):  # a digest per value of row 0: tests check content, the log holds no PHI
                entry["digests"] = {c: hashlib.sha256(str(v).encode("utf-8")).hexdigest()
                                    for c, v in zip(entry["columns"], first)}
        entry["payload"] = describe_payload(input_data)  # what left the node: image kinds, text


def record_reply(entry: dict[str, Any], body: bytes) -> None:
    """Add the JSON document answered with 200 (or a scripted ``body``) to ``entry``, as sent: ``reply`` (None when
    over :data:`REPLY_LIMIT` bytes, e.g. MedImageParse masks) and ``reply_bytes``. Tests read what the model said
    here, not through the node's parser."""
    entry["reply_bytes"] = len(body)
    entry["reply"] = json.loads(body) if len(body) <= REPLY_LIMIT else None
