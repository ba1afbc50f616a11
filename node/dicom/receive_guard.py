"""Survive a full disk while pynetdicom streams a received data set to its temporary file.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each P-DATA fragment to a ``NamedTemporaryFile`` in its
DIMSE reactor thread. When that write fails (ENOSPC, EIO) the exception kills the reactor and the peer sees an
aborted association instead of a C-STORE status. :class:`GuardedTempFile` is a file whose failed write is
remembered instead of raised (the partial data are truncated away to give the space back);
:func:`node.dicom.pynetdicom_patches.install_receive_guard` makes pynetdicom use it. The Storage SCP asks
:func:`write_failed` before anything else and answers 0xA700 (out of resources).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any

log = logging.getLogger(__name__)

_failed: set[str] = set()
_lock = threading.Lock()


class GuardedTempFile:
    """The temporary file pynetdicom writes to; a write that fails marks it failed and drops the rest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._file: Any = None
        self.failed = False
        try:
            self._file = tempfile.NamedTemporaryFile(*args, **kwargs)
            self.name = self._file.name
        except OSError as exc:
            # not even the file could be created: remember a name that does not exist
            self.name = os.path.join(tempfile.gettempdir(), f"unwritable-{os.getpid()}-{id(self)}.dcm")
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if not self.failed:
            self.failed = True
            with _lock:
                _failed.add(str(self.name))
            log.error("cannot write a received data set to the spool (%s): it will be refused with 0xA700",
                      exc.strerror or type(exc).__name__)
            if self._file is not None:
                try:
                    self._file.truncate(0)  # give the space back at once
                except OSError:
                    pass

    def write(self, data: bytes) -> int:
        if self.failed:
            return len(data)
        try:
            return self._file.write(data)
        except OSError as exc:
            self._fail(exc)
            return len(data)

    def flush(self) -> None:
        if self.failed or self._file is None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._fail(exc)

    @property
    def file(self) -> "GuardedTempFile":
        """pynetdicom calls ``.file.flush()`` after each fragment: route it through the guard."""
        return self

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:  # the buffered tail could not be flushed
            self._fail(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def write_failed(path: str | os.PathLike[str]) -> bool:
    """True (once) when writing the received data set at ``path`` failed."""
    with _lock:
        key = str(path)
        if key in _failed:
            _failed.discard(key)
            return True
        return False
