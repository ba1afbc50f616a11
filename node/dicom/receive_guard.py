"""The file pynetdicom streams a received data set to: full-disk safe, unbuffered, and keeping its head in memory.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each P-DATA fragment to a ``NamedTemporaryFile`` in its
DIMSE reactor thread. :func:`node.dicom.pynetdicom_patches.install_receive_guard` makes it use
:class:`GuardedTempFile` instead, which

* remembers a failed write (ENOSPC, EIO) instead of raising it: the exception would kill the reactor and the
  peer would see an aborted association instead of a C-STORE status. The partial data are truncated away to give
  the space back, and the Storage SCP answers 0xA700 (out of resources);
* writes each fragment with one ``os.write`` on the file descriptor, with no Python-level buffer to flush after
  every fragment (pynetdicom calls ``.file.flush()`` each time: a no-op here);
* starts from a file made ahead of need (:mod:`node.dicom.spare_files`) when one is ready;
* keeps the first :data:`HEAD_BYTES` written (preamble, file meta and the start of the data set) in memory, so
  the SCP parses the header from bytes it already has instead of reading the file again (:attr:`head`);
* lets the SCP fsync the descriptor it already holds (:meth:`sync`) before the rename.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any

from node.dicom.spare_files import take_spare

log = logging.getLogger(__name__)

#: Bytes of each received file kept in memory: a header (up to the pixel data) longer than this is read
#: from the file instead.
HEAD_BYTES = 64 * 1024

_failed: set[str] = set()
_lock = threading.Lock()


class GuardedTempFile:
    """A temporary file pynetdicom writes to; a write that fails marks it failed and drops the rest.

    Accepts the arguments of ``tempfile.NamedTemporaryFile`` that pynetdicom passes (``suffix``, ``prefix``,
    ``dir``; the file is always kept, as with ``delete=False``, and opened for binary writing).
    """

    def __init__(self, *args: Any, suffix: str | None = None, prefix: str | None = None, dir: str | None = None,
                 **kwargs: Any) -> None:
        self.fd = -1
        self.failed = False
        self.size = 0  # bytes written (the file's size unless failed)
        self.head = bytearray()
        folder = dir or tempfile.gettempdir()
        spare = take_spare(folder)  # made ahead by node.dicom.spare_files, when the SCP keeps some there
        if spare is not None:
            self.fd, self.name = spare
            return
        try:
            self.fd, self.name = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=folder)
        except OSError as exc:
            # not even the file could be created: remember a name that does not exist
            self.name = os.path.join(dir or tempfile.gettempdir(), f"unwritable-{os.getpid()}-{id(self)}.dcm")
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self.failed:
            self.failed = True
            with _lock:
                _failed.add(str(self.name))
            log.error("cannot write a received data set to the spool (%s): it will be refused with 0xA700",
                      exc.strerror or type(exc).__name__)
            if self.fd >= 0:
                try:
                    os.ftruncate(self.fd, 0)  # give the space back at once
                except OSError:
                    pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write all of ``data`` (or remember that it could not be written); returns ``len(data)``."""
        view = memoryview(data).cast("B")
        n = view.nbytes
        if self.failed:
            return n
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += view[:room]
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self._fail(exc)
        self.size += n
        return n

    def flush(self) -> None:
        """Nothing is buffered in Python: each write went to the kernel."""

    @property
    def file(self) -> "GuardedTempFile":
        """pynetdicom calls ``.file.flush()`` after each fragment: route it through the guard."""
        return self

    @property
    def complete_head(self) -> bool:
        """True when :attr:`head` holds the whole file."""
        return not self.failed and len(self.head) == self.size

    def sync(self) -> None:
        """fsync the file's data and size (releases the GIL); raises OSError."""
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor (the file stays, as with ``delete=False``)."""
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.close(fd)
        except OSError as exc:
            self._fail(exc)

    @property
    def closed(self) -> bool:
        return self.fd < 0


def write_failed(path: str | os.PathLike[str]) -> bool:
    """True (once) when writing the received data set at ``path`` failed."""
    with _lock:
        key = str(path)
        if key in _failed:
            _failed.discard(key)
            return True
        return False
