"""``logging.format: json``: one JSON object per log line, for log collectors (Loki, Elastic, Splunk).

Fields: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``process`` (the role: MainProcess, worker,
receiver-N, http) and ``pid``, ``logger``, ``event`` (the message, after the redaction filter of
:mod:`node.ops.logsafety` has run), ``uids`` (the DICOM UIDs the message names, so a collector can index them) and
``exception`` when there is one. The node's messages carry UIDs and AE titles only, never PHI.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

# A DICOM UID in a message: 3+ dotted numeric components (2.25.x, 1.2.840.x...), not an IP address nor a short
# version number (at least MIN_UID characters).
UID_RE = re.compile(r"(?<![\d.])(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*)){2,}(?![\d.])")
MIN_UID = 9


def uids_in(text: str) -> list[str]:
    """The DICOM UIDs named in ``text``, in order, without repeats (IPv4 addresses are not UIDs)."""
    seen: dict[str, None] = {}
    for m in UID_RE.finditer(text):
        uid = m.group(0)
        if len(uid) < MIN_UID or uid.count(".") == 3 and all(int(p) < 256 for p in uid.split(".")):
            continue  # a dotted quad: an IP address
        seen.setdefault(uid, None)
    return list(seen)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": record.processName,
            "pid": record.process,
            "logger": record.name,
            "event": message,
        }
        uids = uids_in(message)
        if uids:
            out["uids"] = uids
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)
