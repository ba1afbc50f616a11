"""Following the JSON-lines audit trail as the node's processes append to it.

Complete lines only (a line being written is read once its newline is there), each with its byte offset. A
trail renamed away (log rotation) is read to its end through the open descriptor before the new file at the
path is opened from its start; a trail cut shorter than what was read (copytruncate) is read again from 0.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class Trail:
    """``lines()`` yields (offset, event) of every complete line after ``offset``; ``offset`` follows them."""

    def __init__(self, path: Path, inode: int | None = None, offset: int = 0) -> None:
        self.path = path
        self.fd: int | None = None
        self.inode: int | None = None
        self.offset = 0
        self._open(expect_inode=inode, offset=offset)

    def _open(self, expect_inode: int | None = None, offset: int = 0) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        st = os.fstat(fd)
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.inode = fd, st.st_ino
        same = expect_inode is None or expect_inode == st.st_ino
        self.offset = offset if same and offset <= st.st_size else 0
        if not same:
            log.warning("audit trail %s was replaced since the last forward: reading the new file from its start",
                        self.path)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def lines(self, max_bytes: int = CHUNK) -> Iterator[tuple[int, dict[str, Any]]]:
        """Complete lines from ``offset``, at most about ``max_bytes`` of them; bad JSON is skipped with a warning."""
        if self.fd is None:
            self._open()
            if self.fd is None:
                return
        size = os.fstat(self.fd).st_size
        if size < self.offset:  # cut shorter (copytruncate): start again
            log.warning("audit trail %s is shorter than what was read: reading it again from its start", self.path)
            self.offset = 0
        data = os.pread(self.fd, max_bytes, self.offset) if size > self.offset else b""
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) >= max_bytes:  # one line longer than max_bytes
            data = os.pread(self.fd, size - self.offset, self.offset)
            end = data.rfind(b"\n") + 1
        if end == 0:
            self._follow_rotation()
            return
        base = self.offset
        pos = 0
        for raw in data[:end].split(b"\n")[:-1]:
            at = base + pos
            pos += len(raw) + 1
            self.offset = base + pos
            if not raw.strip():
                continue
            try:
                yield at, json.loads(raw)
            except ValueError:
                log.warning("audit trail %s: line at byte %d is not JSON; skipped", self.path, at)

    def _follow_rotation(self) -> None:
        """At the end of the open file: if another file now has the path, switch to it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if st.st_ino != self.inode:
            log.info("audit trail %s was rotated: following the new file", self.path)
            self._open()
            self.offset = 0
