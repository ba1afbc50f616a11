"""Where files live under ``storage_dir``, and how they get there durably.

    storage_dir/
      tmp/          pynetdicom's chunked receive files (same filesystem as the spool, so renames stay atomic),
                    spare ones made ahead, STOW and retrieve downloads; what a killed process left there is
                    removed by the sweep after a day (Spool.remove_stale_tmp)
      spool/<study>/<series>/<sop>.dcm    received instances
      results/<study>/<sop>.dcm           objects the node wrote
      quarantine/<time>-<n>.dcm + .reason.txt   instances that could not be accepted, kept until purged by hand
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from node.store.commit import GroupCommitter

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolFullError(OSError):
    """The spool's filesystem is (nearly) full: the SCP answers 0xA700."""


def is_valid_uid(value: object) -> bool:
    """A DICOM UID usable as a file name: digits and dots, 1..64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(UID_RE.match(value))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path) -> None:
    """Create ``path`` (and parents) and fsync each new directory's parent so the entries survive a crash."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fsync_dir(d.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_durably(src: Path, dst: Path, *, src_synced: bool = False,
                 sync_dir: Callable[[Path], object] = fsync_dir) -> None:
    """fsync ``src``, rename it atomically to ``dst`` (same filesystem) and fsync ``dst``'s directory.

    ``sync_dir`` must return only once an fsync of the directory that began after the rename has ended (the
    SCP passes :meth:`DirSyncer.sync`, which shares one fsync among concurrent renames into one directory).
    """
    if not src_synced:
        fsync_file(src)
    make_dirs_durable(dst.parent)
    os.replace(src, dst)
    sync_dir(dst.parent)


class DirSyncer:
    """Directory fsyncs shared by concurrent renames: group commit (:class:`node.store.commit.GroupCommitter`)
    applied to directories.

    Associations receiving one series rename into one directory; each rename needs an fsync of it that starts
    after the rename. A caller arriving while such an fsync runs waits for the next one, which covers every rename
    made meanwhile: N concurrent renames into a directory cost about two fsyncs, not N. Alone, a caller fsyncs
    at once (no delay for a single association). Every fsync releases the GIL.
    """

    def __init__(self) -> None:
        self._group = GroupCommitter(self._sync_all)

    @staticmethod
    def _sync_all(folders: Sequence[object]) -> list[None]:
        for folder in dict.fromkeys(folders):  # each distinct directory once, in arrival order
            fsync_dir(folder)  # type: ignore[arg-type]
        return [None] * len(folders)

    @property
    def syncs(self) -> int:
        """Directory fsync rounds so far (for tests and benchmarks)."""
        return self._group.batches

    def sync(self, folder: Path) -> None:
        """Return once ``folder`` was fsynced by a round that began after this call; raises its OSError."""
        self._group.submit(folder)


def write_durably(dst: Path, data: bytes) -> None:
    """Write ``data`` to ``dst`` through a temporary file, fsync, rename and directory fsync."""
    make_dirs_durable(dst.parent)
    # unique per writer: nodes of a cluster share the storage folder, and two hosts may run the same pid
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


#: A file in ``tmp`` untouched for this long was left by a receive, STOW or retrieve that died with its process
#: (none of them takes a day: the network timeouts end them first).
STALE_TMP_SECONDS = 24 * 3600.0


class Spool:
    """The node's folders under ``storage_dir``."""

    def __init__(self, storage_dir: Path, *, min_free_bytes: int = 0) -> None:
        self.root = storage_dir
        self.tmp = storage_dir / "tmp"
        self.instances = storage_dir / "spool"
        self.results = storage_dir / "results"
        self.quarantine_dir = storage_dir / "quarantine"
        self.min_free_bytes = min_free_bytes
        self._quarantine_seq = 0

    def create(self) -> None:
        old = os.umask(0o077)
        try:
            for d in (self.root, self.tmp, self.instances, self.results, self.quarantine_dir):
                make_dirs_durable(d)
        finally:
            os.umask(old)

    def remove_stale_tmp(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove the files a killed receive, STOW or retrieve left in ``tmp`` (untouched for ``older_than``
        seconds); returns how many. Spare receive files (``node.dicom.spare_files``) are left to their node: an
        idle node's spare may wait for days, and its node removes those of its dead processes when it starts."""
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self.tmp))
        except OSError:
            return 0
        for entry in entries:
            if entry.name.startswith("spare-"):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:  # gone meanwhile (another node's sweep), or not ours to remove
                pass
        return removed

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        for uid in (study_uid, series_uid, sop_uid):
            if not is_valid_uid(uid):
                raise ValueError(f"not a valid UID: {uid!r}")
        return self.instances / study_uid / series_uid / f"{sop_uid}.dcm"

    def result_path(self, study_uid: str, sop_uid: str) -> Path:
        if not (is_valid_uid(study_uid) and is_valid_uid(sop_uid)):
            raise ValueError("result paths need valid UIDs")
        return self.results / study_uid / f"{sop_uid}.dcm"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`SpoolFullError` when accepting ``incoming_bytes`` would pass the free-space floor."""
        if self.free_bytes() - incoming_bytes < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, "spool filesystem below its free-space floor")

    def quarantine(self, src: Path, reason: str) -> Path:
        """Move a file that could not be accepted into quarantine, with its reason beside it."""
        self._quarantine_seq += 1
        stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{self._quarantine_seq}-{time.monotonic_ns() % 10**9}"
        dst = self.quarantine_dir / f"{stem}.dcm"
        make_dirs_durable(self.quarantine_dir)
        try:
            os.replace(src, dst)
        except OSError:
            try:
                shutil.copyfile(src, dst)
            except OSError:
                dst.write_bytes(b"")
        (self.quarantine_dir / f"{stem}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        return dst
