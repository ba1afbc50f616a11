"""The ATNA spool: syslog messages waiting for the audit record repository, durable, in order, bounded.

A folder of segment files (``<n>.seg``, owner-only) holding records ``M<len> <syslog message>`` and
``C<len> <json>``. The forwarder appends the messages it made from some lines of the trail and, in the same
``write`` + ``fsync``, a C record: where in the trail it has read to. A crash in the middle of an append leaves a
torn tail, cut back to the last C record when the spool opens, so the messages and the trail position are kept
or lost together and the lines are read again: no message is lost or made twice. ``head.json`` (replaced
atomically) says up to where the repository has taken the messages. :meth:`Spool.append` refuses a batch that
would take the spool past its bound: the lines stay unread in the trail (which holds them durably) until the
repository takes messages again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, order=True)
class Pos:
    segment: int
    offset: int


@dataclass(frozen=True)
class Taken:
    """One message read from the spool: the position after it, the trail position recorded behind it (if any)."""

    pos: Pos
    message: bytes
    cursor: dict[str, Any] | None


def _record(kind: bytes, payload: bytes) -> bytes:
    return kind + str(len(payload)).encode("ascii") + b" " + payload


def _records(data: bytes, start: int = 0):
    """(kind, payload, end offset) of each complete record of ``data`` from ``start``; stops at a torn one."""
    i = start
    while i < len(data):
        space = data.find(b" ", i + 1, i + 12)
        kind = data[i:i + 1]
        if kind not in (b"M", b"C") or space < 0 or not data[i + 1:space].isdigit():
            return
        end = space + 1 + int(data[i + 1:space])
        if end > len(data):
            return
        yield kind, data[space + 1:end], end
        i = end


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable FIFO of syslog messages; thread-safe (one appender, one sender)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.segment_bytes = max(65536, min(SEGMENT_BYTES, max_bytes // 8))  # a consumed segment goes soon
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Condition()
        head = self._read_head()
        self.head = Pos(head.get("segment", 0), head.get("offset", 0))
        self._head_cursor: dict[str, Any] | None = head.get("cursor")
        self.pending = 0
        self.pending_bytes = 0
        self._cursor = self._head_cursor
        self._recover()

    # --- opening ------------------------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.seg") if p.stem.isdigit())

    def _path(self, n: int) -> Path:
        return self.folder / f"{n:012d}.seg"

    def _read_head(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / "head.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def _recover(self) -> None:
        """Count what waits after the head, find the last trail position, cut a torn tail back."""
        if not self._path(self.head.segment).exists():  # its segment was never written (or removed by hand)
            self.head = Pos(self.head.segment, 0)
        segments = [n for n in self._segments() if n >= self.head.segment]
        for n in self._segments():
            if n < self.head.segment:
                self._path(n).unlink()
        if not segments:
            self.segments = [self.head.segment]
            self._end = Pos(self.head.segment, self.head.offset)
            return
        last_good: Pos | None = None
        for n in segments:
            data = self._path(n).read_bytes()
            start = self.head.offset if n == self.head.segment else 0
            msgs, size = 0, 0
            for kind, payload, end in _records(data, start):
                if kind == b"M":
                    msgs, size = msgs + 1, size + len(payload)
                else:
                    self._cursor = json.loads(payload)
                    self.pending += msgs
                    self.pending_bytes += size
                    msgs, size = 0, 0
                    last_good = Pos(n, end)
        keep_to = last_good or Pos(self.head.segment, self.head.offset)
        for n in segments:
            if n > keep_to.segment:
                self._path(n).unlink()
            elif n == keep_to.segment and self._path(n).stat().st_size > keep_to.offset:
                log.warning("ATNA spool: cutting a torn append at the end of %s", self._path(n).name)
                os.truncate(self._path(n), keep_to.offset)
        self.segments = [n for n in segments if n <= keep_to.segment] or [self.head.segment]
        self._end = keep_to

    # --- the appender -------------------------------------------------------------------------------------
    @property
    def trail_cursor(self) -> dict[str, Any] | None:
        """The last trail position appended (what the forwarder had read when it wrote its last messages)."""
        return self._cursor

    def append(self, messages: list[bytes], cursor: dict[str, Any]) -> bool:
        """Append ``messages`` and the trail position in one durable write; False when the bound refuses them."""
        data = b"".join(_record(b"M", m) for m in messages) + _record(b"C", json.dumps(cursor).encode("utf-8"))
        with self._lock:
            if messages and self.pending_bytes + len(data) > self.max_bytes and self.pending:
                return False
            n = self.segments[-1]
            if self._end.offset >= self.segment_bytes:
                n += 1
                self.segments.append(n)
            path = self._path(n)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                _fsync_dir(self.folder)
            self._end = Pos(n, (self._end.offset if n == self._end.segment else 0) + len(data))
            self._cursor = cursor
            self.pending += len(messages)
            self.pending_bytes += sum(len(m) for m in messages)
            if messages:
                self._lock.notify_all()
        return True

    # --- the sender ---------------------------------------------------------------------------------------
    def wait(self, timeout: float) -> bool:
        """Wait until a message waits (or ``timeout``); True when one does."""
        with self._lock:
            if not self.pending:
                self._lock.wait(timeout)
            return self.pending > 0

    def peek(self, max_count: int = 500, max_bytes: int = 1 << 20) -> list[Taken]:
        """The oldest messages not yet taken, each with the position after it (and after a C record behind it)."""
        out: list[Taken] = []
        with self._lock:
            pos, end = self.head, self._end
        size = 0
        while len(out) < max_count and size < max_bytes and pos < end:
            path = self._path(pos.segment)
            limit = end.offset if pos.segment == end.segment else path.stat().st_size
            if pos.offset >= limit:  # the end of a full segment: the next one
                pos = Pos(pos.segment + 1, 0)
                continue
            with open(path, "rb") as f:
                f.seek(pos.offset)
                data = f.read(min(limit - pos.offset, max_bytes - size + 65536))
                recs = list(_records(data))
                if not recs:  # one record longer than that read
                    data += f.read(limit - pos.offset - len(data))
                    recs = list(_records(data))
            if not recs:
                raise OSError(f"ATNA spool: unreadable record in {path.name} at {pos.offset}")
            for kind, payload, rec_end in recs:
                at = Pos(pos.segment, pos.offset + rec_end)
                if kind == b"M":
                    if len(out) >= max_count or size >= max_bytes:
                        return out
                    out.append(Taken(at, payload, None))
                    size += len(payload)
                elif out:
                    out[-1] = Taken(at, out[-1].message, json.loads(payload))
            pos = Pos(pos.segment, pos.offset + recs[-1][2])
        return out

    def commit(self, taken: list[Taken]) -> None:
        """The repository took the messages ``taken`` (the oldest ones): move the head after them, durably."""
        if not taken:
            return
        with self._lock:
            pos = taken[-1].pos
            cursor = next((t.cursor for t in reversed(taken) if t.cursor is not None), self._head_cursor)
            head = {"segment": pos.segment, "offset": pos.offset, "cursor": cursor}
            tmp = self.folder / "head.json.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(head).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.folder / "head.json")
            _fsync_dir(self.folder)
            self.head, self._head_cursor = pos, cursor
            self.pending = max(0, self.pending - len(taken))
            self.pending_bytes = max(0, self.pending_bytes - sum(len(t.message) for t in taken))
            for n in [s for s in self.segments if s < pos.segment]:
                self._path(n).unlink(missing_ok=True)
                self.segments.remove(n)
