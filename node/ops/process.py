"""What every process of the node does at start: one log format, and dying with its parent."""

from __future__ import annotations

import ctypes
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
