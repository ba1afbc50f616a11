"""Process-wide safety settings of the node's processes (``serve`` and its worker).

* umask 077: every file and folder the node, SQLite, Huey or pynetdicom creates is owner-only (spool files,
  node.db and its -wal/-shm, queue.db, results, quarantine, the audit trail).
* The storage folder itself and SQLite files made by an earlier, laxer run are tightened (0700 / 0600) when
  this user owns them.
* pynetdicom never logs C-FIND/C-GET/C-MOVE identifiers (they hold patient names and IDs), in either role.
* pydicom does not validate values while reading: its "Invalid value for VR DA: '1937-04-12'" warnings quote
  the value (a birth date, a name, an ID pasted into a UID) into the log. The node reads foreign data and has
  its own checks (UIDs, quarantine); the warnings are switched off, not the checks.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from node.dicom.pynetdicom_patches import quiet_identifiers

log = logging.getLogger(__name__)

UMASK = 0o077


def quiet_pynetdicom_identifiers() -> None:
    """Query/retrieve identifiers are PHI: pynetdicom must not log them (as SCP or as SCU)."""
    quiet_identifiers()  # every pynetdicom setting lives in node.dicom.pynetdicom_patches


def quiet_pydicom_values() -> None:
    """No value-quoting validation warnings from pydicom (logged and issued as Python warnings)."""
    import warnings

    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", message=r"Invalid value for VR", module=r"pydicom(\..*)?$")


def _tighten(path: Path, mode: int) -> None:
    try:
        st = path.stat()
    except OSError:
        return
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077 == 0:
        return
    try:
        path.chmod(stat.S_IMODE(st.st_mode) & ~0o077 & mode)
        log.warning("tightened permissions of %s to %o", path, stat.S_IMODE(path.stat().st_mode))
    except OSError as exc:
        log.warning("cannot tighten permissions of %s: %s", path, exc.strerror)


def harden_process(storage_dir: Path | None = None) -> None:
    """Set the umask, tighten the storage folder and its database files, silence identifier logging."""
    os.umask(UMASK)
    quiet_pynetdicom_identifiers()
    quiet_pydicom_values()
    if storage_dir is None or not storage_dir.exists():
        return
    _tighten(storage_dir, 0o700)
    for folder in (storage_dir, *storage_dir.glob("nodes/*")):  # nodes/<instance_id>: each cluster node's own
        for pattern in ("*.db", "*.db-wal", "*.db-shm", "*.jsonl"):
            for path in folder.glob(pattern):
                _tighten(path, 0o600)
