"""The thread that sends the spool's messages to the audit record repository, oldest first, never skipping one.

It connects (and reconnects after a failure, waiting twice as long each time up to ``retry_max_seconds``), sends
up to 500 messages at a time and moves the spool's head only once the repository took them
(:meth:`node.audit.transport.Connection.send`). What it knows of the repository is in :attr:`Sender.state`
(for the status file, the metrics and the ALERT lines).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from node.audit.settings import SyslogSection
from node.audit.spool import Spool
from node.audit.transport import Connection, TransportError, tls_context

log = logging.getLogger(__name__)

BATCH = 500


class Sender(threading.Thread):
    def __init__(self, cfg: SyslogSection, spool: Spool) -> None:
        super().__init__(name="atna-sender", daemon=True)
        self.cfg = cfg
        self.spool = spool
        self.context = tls_context(cfg) if cfg.transport == "tls" else None
        self.stopping = threading.Event()
        self.drain_until = 0.0
        self.state: dict[str, Any] = {"connected": False, "last_error": None, "sent": 0, "down_since": None}

    def stop(self, drain_seconds: float) -> None:
        """Stop after sending what waits, for at most ``drain_seconds``."""
        self.drain_until = time.monotonic() + drain_seconds
        self.stopping.set()

    def run(self) -> None:
        conn: Connection | None = None
        delay = 0.5
        while True:
            if self.stopping.is_set() and (self.spool.pending == 0 or time.monotonic() > self.drain_until):
                break
            if not self.spool.wait(0.2):
                continue
            if conn is None:
                conn = Connection(self.cfg, self.context)
                try:
                    conn.open()
                except TransportError as exc:
                    conn = None
                    self._down(str(exc))
                    self.stopping.wait(delay)
                    delay = min(delay * 2, self.cfg.retry_max_seconds)
                    continue
                self._up()
            batch = self.spool.peek(BATCH)
            if not batch:
                continue
            try:
                conn.send([t.message for t in batch])
            except TransportError as exc:
                conn.close()
                conn = None
                self._down(str(exc))
                continue  # reconnect at once; the batch is sent again from the spool
            self.spool.commit(batch)
            self.state["sent"] += len(batch)
            delay = 0.5
        if conn is not None:
            conn.close()

    def _down(self, why: str) -> None:
        first = self.state["connected"] or self.state["down_since"] is None
        self.state.update(connected=False, last_error=why)
        if self.state["down_since"] is None:
            self.state["down_since"] = time.time()
        if first:
            log.warning("audit repository unavailable, messages wait in the ATNA spool: %s", why)

    def _up(self) -> None:
        if self.state["down_since"] is not None:
            log.info("audit repository %s:%s reachable again: sending the %d waiting message(s)",
                     self.cfg.host, self.cfg.port, self.spool.pending)
        self.state.update(connected=True, down_since=None)
