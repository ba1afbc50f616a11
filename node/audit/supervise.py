"""``serve``'s side of the audit: the node's start and stop events, configuration changes, the forwarder process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from node.audit.confwatch import ConfigWatch, _os_user
from node.ops.audit import audit_log

log = logging.getLogger(__name__)

WATCH_SECONDS = 5.0


class AuditSide:
    """``start()`` when the node starts, ``poll()`` from serve's loop, ``stop()`` last."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.watch = ConfigWatch(cfg)
        self._next_watch = 0.0

    def _identity(self) -> dict[str, Any]:
        node = self.cfg.node
        return {"ae_title": node.ae_title, "port": node.port, "tls_port": node.tls.port if node.tls else None,
                "instance_id": node.instance_id, "user": _os_user(), "config": str(self.cfg.source_path)}

    def start(self) -> None:
        """Before the node listens: a changed configuration, the start event, the forwarder."""
        self.watch.check(at_start=True)
        audit_log(self.cfg).record("node-start", **self._identity())
        self._next_watch = time.monotonic() + WATCH_SECONDS
        self._start_forwarder()

    def _start_forwarder(self) -> None:
        if self.cfg.audit.syslog is None or self.cfg.audit_path is None:
            return
        cmd = [sys.executable, "-m", "node.cli", "audit-forward", "--config", str(self.cfg.source_path),
               "--parent-pid", str(os.getpid())]
        self.proc = subprocess.Popen(cmd)
        log.info("ATNA forwarder process %d started", self.proc.pid)

    def poll(self) -> None:
        """From serve's loop (every second): restart a dead forwarder; look for a changed configuration."""
        if self.proc is not None and self.proc.poll() is not None:
            log.error("ATNA forwarder exited with %s; restarting it", self.proc.returncode)
            self._start_forwarder()
        if time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + WATCH_SECONDS
            self.watch.check(at_start=False)

    def stop(self, how: str = "stopped") -> None:
        """After everything else stopped: the stop event, then the forwarder (which sends it before it exits)."""
        audit_log(self.cfg).record("node-stop", **self._identity(), ended=how)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
