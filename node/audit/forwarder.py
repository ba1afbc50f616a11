"""``dicom-node audit-forward``: the process that turns the audit trail into ATNA messages and sends them.

Started by ``serve`` when ``audit.syslog`` is set (:mod:`node.audit.supervise`), in a process of its own so that
nothing it does (reading the trail, reading a study's header for its patient, building XML, TLS) takes the
receiving processes' CPU time or GIL. Its files are in ``<node_dir>/atna/``: ``spool/`` (the messages waiting,
:mod:`node.audit.spool`), ``patients.db`` (:mod:`node.audit.patients`) and ``status.json`` (read by
``dicom-node status`` and the HTTP side's metrics, :mod:`node.audit.status`).

On SIGTERM it reads the trail to its end (the node's stop event included), then sends what waits for at most
:data:`DRAIN_SECONDS`; whatever is left stays in the spool for the next start.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from node.audit.convert import Converter
from node.audit.events import Context
from node.audit.patients import PatientDirectory
from node.audit.sender import Sender
from node.audit.spool import Spool
from node.audit.tail import Trail

log = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0
STEP_BYTES = 64 * 1024  # of the trail per step: what one spool append holds stays small next to its bound
POLL_SECONDS = 0.2
ALERT_REPEAT_SECONDS = 300.0


def atna_dir(node_dir: Path) -> Path:
    return node_dir / "atna"


def _endpoint_urls(cfg: Any) -> dict[str, str]:
    out = {}
    for name, ep in cfg.endpoints.items():
        if ep.url:
            u = urlsplit(ep.url)
            out[name] = urlunsplit((u.scheme, u.hostname + (f":{u.port}" if u.port else ""), u.path, "", ""))
        else:
            out[name] = f"azureml://{ep.workspace}/{ep.endpoint_name}"
    return out


class Forwarder:
    """The trail -> converter -> spool loop (this thread) and the spool -> repository sender (its own)."""

    def __init__(self, cfg: Any) -> None:
        from node.store.schema import make_engine

        self.cfg = cfg
        self.syslog = cfg.audit.syslog
        folder = atna_dir(cfg.node_dir)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.status_path = folder / "status.json"
        self.spool = Spool(folder / "spool", self.syslog.spool_max_mb * 1024 * 1024)
        cursor = self.spool.trail_cursor or {}
        self.trail = Trail(cfg.audit_path, cursor.get("inode"), int(cursor.get("resume", 0)))
        engine = make_engine(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
        self.patients = PatientDirectory(folder / "patients.db", engine)
        ctx = Context(source_id=self.syslog.audit_source_id or cfg.node.instance_id, ae_title=cfg.node.ae_title,
                      site_id=self.syslog.enterprise_site_id, endpoint_urls=_endpoint_urls(cfg),
                      patient_of=self.patients.of_study, max_bytes=self.syslog.max_message_bytes,
                      patient_of_message=self.patients.of_hl7_message)
        self.converter = Converter(ctx, self.syslog.app_name, cursor, self.patients.forget)
        if cursor.get("inode") not in (None, self.trail.inode):  # replaced while the forwarder was not running
            self.converter.rebase()
        self.sender = Sender(self.syslog, self.spool)
        self._blocked: tuple[list[bytes], dict[str, Any]] | None = None
        self._alerted_at = 0.0
        self._stop = threading.Event()

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def step(self) -> bool:
        """Read what the trail has; spool its messages. False when nothing new was read (or the spool is full)."""
        if self._blocked is not None:
            if not self.spool.append(*self._blocked):
                return False
            self._blocked = None
        made: list[bytes] = []
        read = False
        inode = self.trail.inode
        for offset, ev in self.trail.lines(STEP_BYTES):
            made += self.converter.feed(offset, ev)
            read = True
        if self.trail.inode != inode:  # rotated: the next lines are the new file's
            self.converter.rebase()
            read = True
        made += self.converter.expire()
        if made:
            cursor = self.converter.cursor(self.trail.inode, self.trail.offset)
            if not self.spool.append(made, cursor):
                self._blocked = (made, cursor)
                return False
        else:
            self.converter.cursor(self.trail.inode, self.trail.offset)
        return read

    def run(self, parent_pid: int | None = None) -> int:
        self.sender.start()
        log.info("ATNA forwarder: %s -> %s:%s (%s); %d message(s) waiting", self.cfg.audit_path,
                 self.syslog.host, self.syslog.port, self.syslog.transport, self.spool.pending)
        last_status = 0.0
        while not self._stop.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            busy = self.step()
            now = time.monotonic()
            if now - last_status >= 1.0:
                self._report()
                last_status = now
            if not busy:
                self._stop.wait(POLL_SECONDS)
        while self.step():  # the lines written up to the stop (the node's own stop event among them)
            pass
        self.sender.stop(DRAIN_SECONDS)
        self.sender.join(DRAIN_SECONDS + 15)
        self._report()
        self.patients.close()
        self.trail.close()
        log.info("ATNA forwarder stopped; %d message(s) wait for the next start", self.spool.pending)
        return 0

    def _report(self) -> None:
        """status.json, and an ALERT line while the backlog is past ``alert_backlog`` or the spool is full."""
        state = self.sender.state
        status = {"pid": os.getpid(), "updated": time.time(), "pending": self.spool.pending,
                  "pending_bytes": self.spool.pending_bytes, "spool_full": self._blocked is not None,
                  "connected": state["connected"], "last_error": state["last_error"],
                  "down_since": state["down_since"], "sent": state["sent"],
                  "repository": f"{self.syslog.host}:{self.syslog.port}", "alert_backlog": self.syslog.alert_backlog}
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status), encoding="utf-8")
        os.replace(tmp, self.status_path)
        over = status["pending"] > self.syslog.alert_backlog or status["spool_full"]
        now = time.monotonic()
        if over and now - self._alerted_at >= ALERT_REPEAT_SECONDS:
            self._alerted_at = now
            full = " and the spool is full (new events wait in the trail)" if status["spool_full"] else ""
            log.error("ALERT: %d ATNA audit message(s) wait for the audit repository %s%s: %s", status["pending"],
                      status["repository"], full, status["last_error"] or "it takes them slower than they come")
        elif not over and self._alerted_at:
            self._alerted_at = 0.0
            log.info("ATNA backlog back under %d message(s)", self.syslog.alert_backlog)


def run_forwarder(cfg: Any, parent_pid: int | None = None) -> int:
    """The process's entry point (``dicom-node audit-forward``)."""
    from node.ops.process import die_with_parent

    die_with_parent()
    multiprocessing.current_process().name = "atna"
    if cfg.audit.syslog is None or cfg.audit_path is None:
        log.error("audit.syslog is not set: nothing to forward")
        return 2
    fwd = Forwarder(cfg)
    signal.signal(signal.SIGTERM, fwd.request_stop)
    signal.signal(signal.SIGINT, fwd.request_stop)
    return fwd.run(parent_pid)
