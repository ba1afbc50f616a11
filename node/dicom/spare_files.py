"""Empty receive files created ahead of need, so that a C-STORE never waits for its file to be created.

pynetdicom creates the file a data set is streamed to when the message's first fragment arrives, in the
association's reactor thread: every instance waits for one file creation. That is cheap on a local journaled
file system, but not everywhere: on the shared folder of a cluster (NFS) it is a round trip to the server, and
on the journal-less ext4 of the machine the benchmarks run on, the kernel's search for a free inode took ~0.55 ms
of CPU per file (perf: ``find_inode_bit`` / ``recently_deleted``), ~0.7 ms of the ~5.3 ms each instance took on
one association.

:class:`SpareFiles` keeps a few empty files ready in the spool's ``tmp`` folder, made by a background thread
(file creation releases the GIL, so it runs beside the transfer); :class:`node.dicom.receive_guard.GuardedTempFile`
takes one when there is one and creates its file itself otherwise. A spare is a file like any other receive file:
written, fsynced, renamed into the spool. Spares are named ``spare-<instance id>-<pid>-*``; at start, a receiver
removes those of its own node left by processes that are gone (a crash), and at a clean stop its own.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

KEEP = 2  # one for the message arriving now, one for the next (several associations take turns refilling)

_pools: dict[str, "SpareFiles"] = {}
_pools_lock = threading.Lock()


class SpareFiles:
    """A few empty files kept ready in ``folder`` by a background thread (see the module docs)."""

    def __init__(self, folder: Path, owner: str, keep: int = KEEP) -> None:
        self.folder = folder
        self.prefix = f"spare-{_safe(owner)}-{os.getpid()}-"
        self.owner = owner
        self.keep = keep
        self._ready: deque[tuple[int, str]] = deque()
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> "SpareFiles":
        """Remove this node's spares left by dead processes, register for ``folder``, start making spares."""
        self._remove_orphans()
        with _pools_lock:
            _pools[_key(self.folder)] = self
        self._wanted.set()
        self._thread = threading.Thread(target=self._run, name="spare-files", daemon=True)
        self._thread.start()
        return self

    def take(self) -> tuple[int, str] | None:
        """An open, empty spare file (descriptor, path), or None when none is ready."""
        with self._lock:
            spare = self._ready.popleft() if self._ready else None
        self._wanted.set()
        return spare

    def stop(self) -> None:
        """Stop making spares and remove those not taken."""
        with _pools_lock:
            if _pools.get(_key(self.folder)) is self:
                del _pools[_key(self.folder)]
        self._stopped = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            left, self._ready = list(self._ready), deque()
        for fd, name in left:
            _discard(fd, name)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            while not self._stopped:
                with self._lock:
                    if len(self._ready) >= self.keep:
                        break
                try:
                    fd, name = tempfile.mkstemp(prefix=self.prefix, suffix=".dcm", dir=self.folder)
                except OSError as exc:  # a full disk: receivers create their own files (and see the error)
                    log.debug("cannot make a spare receive file: %s", exc)
                    break
                with self._lock:
                    if not self._stopped:
                        self._ready.append((fd, name))
                        continue
                _discard(fd, name)
            if self._stopped:
                return

    def _remove_orphans(self) -> None:
        pattern = re.compile(rf"spare-{re.escape(_safe(self.owner))}-(\d+)-")
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            m = pattern.match(name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                try:
                    os.unlink(self.folder / name)
                except OSError:
                    pass


def take_spare(folder: str | os.PathLike[str]) -> tuple[int, str] | None:
    """A spare file of ``folder``'s pool, or None (no pool there, or none ready)."""
    pool = _pools.get(_key(folder)) if _pools else None
    return pool.take() if pool is not None else None


def _key(folder: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(folder))


def _safe(owner: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", owner)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(fd: int, name: str) -> None:
    try:
        os.close(fd)
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass
