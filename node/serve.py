"""``dicom-node serve``: every role of the node on one machine.

The main process runs the Storage SCP (receive) and supervises a worker process (decide, convert, invoke,
write, return), the HTTP side and the MLLP listener (child processes, when configured). SIGTERM or SIGINT drains: stop accepting associations, let those in progress finish, let the
worker finish the tasks in flight (Huey's graceful stop), exit. What is not finished stays in the database
and the durable queue and resumes on the next start.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from node.audit.supervise import AuditSide
from node.config import NodeConfig
from node.dicom.receivers import ReceiverPool
from node.dicom.scp import StorageSCP
from node.flow.intake import Intake
from node.flow.queue import Queue
from node.http.context import worker_pidfile
from node.ops.hardening import harden_process
from node.ops.metricsdir import mark_dead
from node.ops.process import die_with_parent, freeze_startup_heap, setup_logging
from node.store.spool import Spool
from node.store.state import Store

log = logging.getLogger(__name__)


class Node:
    """The running node: SCP in this process, the worker in a child process."""

    def __init__(self, cfg: NodeConfig) -> None:
        if cfg.source_path is None or not Path(cfg.source_path).is_file():
            raise ValueError("serve needs a configuration file (the worker process reads the same file)")
        self.cfg = cfg
        harden_process(cfg.storage_dir)  # umask 077, owner-only storage, no identifiers in pynetdicom's logs
        self.spool = Spool(cfg.storage_dir, min_free_bytes=cfg.node.min_free_disk_mb * 1024 * 1024)
        self.spool.create()
        cfg.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # this node's own files (several may share storage)
        self.store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
        released = self.store.release_leases_of(cfg.node.instance_id)
        if released:
            log.warning("resuming: released %d lease(s) left by an earlier run of this node", released)
        self.queue = Queue(cfg)
        self.intake = Intake(cfg, self.store, self.queue)
        self.scp = StorageSCP(cfg, self.store, self.spool, self.intake)
        self.sources: list = []  # change-feed pollers and UPS-RS task performers (node.ups), started with the SCP
        self.worker: subprocess.Popen | None = None
        self.http: subprocess.Popen | None = None  # the HTTP side (node/http), when http.port is set
        self.mllp: subprocess.Popen | None = None  # the HL7 v2 listener (node/hl7/listener.py), when mllp is set
        self.receivers = ReceiverPool(cfg, cfg.node.receivers)  # children when node.receivers > 1
        self.audit = AuditSide(cfg)  # start/stop events, configuration changes, the ATNA forwarder (node/audit)
        self._stop = threading.Event()

    def _start_worker(self) -> None:
        cmd = [sys.executable, "-m", "node.cli", "worker", "--config", str(self.cfg.source_path),
               "--parent-pid", str(os.getpid())]
        if self.worker is not None:
            mark_dead(self.worker.pid)
        self.worker = subprocess.Popen(cmd)
        worker_pidfile(self.cfg.node_dir).write_text(str(self.worker.pid))  # /readyz: is the worker alive?
        log.info("worker process %d started", self.worker.pid)

    def _release_leases_of(self, pid: int) -> None:
        """The worker ``pid`` died: its jobs and sends resume now, not when their leases would have expired."""
        try:
            released = self.store.release_leases_of(self.cfg.node.instance_id, pid)
        except Exception:  # the sweep takes them over when their leases expire
            log.exception("releasing the leases of worker process %d failed", pid)
            return
        log.warning("released %d lease(s) of dead worker process %d", released, pid)

    def _start_http(self) -> None:
        if self.cfg.http.port is None:
            return
        cmd = [sys.executable, "-m", "node.cli", "http", "--config", str(self.cfg.source_path),
               "--parent-pid", str(os.getpid())]
        self.http = subprocess.Popen(cmd)

    def _start_mllp(self) -> None:
        if self.cfg.mllp is not None:
            self.mllp = subprocess.Popen([sys.executable, "-m", "node.cli", "mllp", "--config",
                                          str(self.cfg.source_path), "--parent-pid", str(os.getpid())])

    def start(self) -> None:
        self.audit.start()
        self._start_worker()
        self._start_http()
        self._start_mllp()
        self.receivers.start()  # node.receivers > 1: the others listen before this one, see node.receivers
        self.scp.start()
        if self.cfg.sources:
            from node.dicomweb.changefeed import ChangeFeedPoller
            from node.ups.performer import TaskPerformer  # AIW-I worklists (sources: type ups-rs)

            self.sources = [
                TaskPerformer(self.cfg, src, self.store, self.spool, self.intake, self.queue.enqueue_job).start()
                if src.type == "ups-rs" else
                ChangeFeedPoller(self.cfg, src, self.store, self.spool, self.intake).start()
                for src in self.cfg.sources]
        freeze_startup_heap()

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def run_until_stopped(self) -> None:
        """Block until SIGTERM/SIGINT; restart the worker if it dies meanwhile."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        while not self._stop.wait(1.0):
            if self.worker is not None and self.worker.poll() is not None:
                log.error("worker process exited with %s; restarting it", self.worker.returncode)
                self._release_leases_of(self.worker.pid)
                self._start_worker()
            if self.http is not None and self.http.poll() is not None:
                log.error("HTTP side exited with %s; restarting it", self.http.returncode)
                self._start_http()
            if self.mllp is not None and self.mllp.poll() is not None:
                log.error("MLLP listener exited with %s; restarting it", self.mllp.returncode)
                self._start_mllp()
            self.receivers.restart_dead()
            self.audit.poll()
        self.stop()

    def stop(self, drain_seconds: float = 30.0) -> None:
        log.info("draining: no new associations; waiting for those in progress and for tasks in flight")
        for poller in self.sources:
            poller.stop(drain_seconds)
        self.receivers.signal_stop()
        self.scp.stop(drain_seconds)
        self.receivers.wait(drain_seconds)
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGINT)  # Huey: graceful stop, running tasks finish
            try:
                self.worker.wait(timeout=max(drain_seconds, self.cfg.queue.lease_seconds))
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        for child in (self.http, self.mllp):  # the HTTP side and the MLLP listener
            if child is not None and child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        self.store.engine.dispose()
        self.audit.stop()
        log.info("stopped")


def serve(cfg: NodeConfig) -> int:
    """`dicom-node serve`: start every role of the node and run until SIGTERM/SIGINT; returns 0."""
    setup_logging(cfg.log_level, cfg.logging.format)
    node = Node(cfg)
    node.start()
    node.run_until_stopped()
    return 0


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def run_receiver(cfg: NodeConfig, index: int, parent_pid: int, rearm_timers: bool = False,
                 ready_fd: int | None = None, drain_seconds: float = 30.0) -> int:
    """One child receiver: the Storage SCP on the shared port until SIGTERM/SIGINT (drained) or its parent dies."""
    die_with_parent()
    if os.getppid() != parent_pid:
        return 0  # the parent died before prctl took effect
    multiprocessing.current_process().name = f"receiver-{index}"  # names the process in every log line
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    harden_process(cfg.storage_dir)
    spool = Spool(cfg.storage_dir, min_free_bytes=cfg.node.min_free_disk_mb * 1024 * 1024)
    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    queue = Queue(cfg)
    intake = Intake(cfg, store, queue)
    scp = StorageSCP(cfg, store, spool, intake)
    scp.serve_tls = False  # the TLS port stays with receiver 0 (serve)
    scp.start()
    freeze_startup_heap()
    log.info("receiver %d (process %d) listening on %s:%s", index, os.getpid(), cfg.node.host, scp.port)
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        except OSError:  # serve stopped waiting (or a restarted receiver's pipe was closed): nothing to tell
            pass
    if rearm_timers:
        # this receiver replaces one that died: its in-memory quiet timers died with it
        intake.rearm()
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            break
    log.info("receiver %d draining (%d instances received)", index, scp.received)
    scp.stop(drain_seconds)
    store.engine.dispose()
    return 0
