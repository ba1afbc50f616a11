"""RFC 5424 syslog messages as IHE ATNA wants them (ITI-20), and their octet-counting frames (RFC 5425 / 6587).

``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM<AuditMessage .../>``: facility 10 (security /
authorization), severity 5 (notice) for a success and 4 (warning) for a failure, MSGID ``IHE+RFC-3881``, no
structured data, the DICOM audit message as MSG in UTF-8 after the byte order mark RFC 5424 asks for.
"""

from __future__ import annotations

FACILITY = 10  # security/authorization messages
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
NOTICE, WARNING = 5, 4


def _field(value: object, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters; '-' when empty."""
    text = "".join(ch for ch in str(value or "") if 33 <= ord(ch) <= 126)[:limit]
    return text or "-"


def message(xml: bytes, *, timestamp: str, hostname: str, app_name: str, procid: object, outcome: int) -> bytes:
    """One syslog message (without its frame). ``timestamp``: RFC 3339 with its offset (the event's time)."""
    pri = FACILITY * 8 + (NOTICE if outcome == 0 else WARNING)
    head = (f"<{pri}>1 {_field(timestamp, 64)} {_field(hostname, 255)} {_field(app_name, 48)} "
            f"{_field(procid, 128)} {MSGID} - ")
    return head.encode("ascii") + BOM + xml


def frame(msg: bytes) -> bytes:
    """Octet counting (RFC 5425 section 4.3): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(msg)).encode("ascii") + b" " + msg
