"""What every process of the node does at start: one log format, dying with its parent, a frozen start-up heap."""

from __future__ import annotations

import ctypes
import gc
import logging
import signal
import sys

from node.ops.jsonlog import JsonFormatter
from node.ops.logsafety import install_redaction


def setup_logging(level: str, fmt: str = "text") -> None:
    """One format for every role (``fmt``: text, or json lines); chatty libraries stay at WARNING unless DEBUG."""
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s")
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    install_redaction()  # secrets that slip into a record are masked (node/ops/logsafety.py)
    if level != "DEBUG":
        for name in ("pynetdicom", "huey", "httpx", "httpcore", "azure", "urllib3", "highdicom"):
            logging.getLogger(name).setLevel(logging.WARNING)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (``serve``) dies, so no orphan keeps working."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def freeze_startup_heap() -> None:
    """Take what start-up allocated out of the cyclic garbage collector's reach (``gc.freeze``).

    A started process holds ~130,000 long-lived objects (modules, pydicom's data dictionary, SQLAlchemy's
    metadata, pynetdicom's contexts) that every full collection walks again: ~65 ms each here, holding the GIL.
    pynetdicom's server forces one every 60 associations (``AssociationServer.service_actions``), ~1.1 ms per
    association for a modality that opens one per instance, and Python's own full collections pause every
    thread of the process the same way. Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()
