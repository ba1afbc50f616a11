"""Extra receiver processes: ``node.receivers`` > 1 runs that many Storage SCPs on one DICOM port.

One Python process receiving with pynetdicom is bound by its GIL (about 3 ms of CPU per instance in pynetdicom
itself), so parallel senders could not use more than one core. With ``node.receivers: N`` the ``serve`` process
keeps its own SCP (receiver 0, which also serves the TLS port) and starts N-1 child processes running the same
SCP; every one binds the plain port with SO_REUSEPORT and Linux spreads new connections across them.

Each receiver is the whole receive path on its own: durable spool write, group commit into the shared SQLite
database (WAL, ``BEGIN IMMEDIATE``: several writer processes are fine), its own quiet timers. A check is
idempotent and re-arms itself, so it does not matter which process armed it. A restarted receiver re-arms the
timers of every study still receiving, since its predecessor's timers died with it.

Lifecycle, like the worker's: a receiver that dies is restarted by ``serve``; SIGTERM (sent by ``serve`` when it
drains) stops accepting, lets the associations in progress finish and exits 0; PR_SET_PDEATHSIG kills a
receiver whose ``serve`` died.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from node.config import NodeConfig, load_config
from node.dicom.scp import StorageSCP
from node.flow.intake import Intake
from node.flow.queue import Queue
from node.ops.hardening import harden_process
from node.ops.process import die_with_parent, setup_logging
from node.store.spool import Spool
from node.store.state import Store

log = logging.getLogger(__name__)


class ReceiverPool:
    """The child receiver processes of ``serve`` (indices 1..count-1; index 0 is ``serve`` itself)."""

    def __init__(self, cfg: NodeConfig, count: int) -> None:
        self.cfg = cfg
        self.count = count
        self.procs: dict[int, subprocess.Popen] = {}
        self._stopping = False

    def _spawn(self, index: int, rearm: bool) -> int:
        """Start receiver ``index``; returns the read end of the pipe it writes one byte to once it listens."""
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, "-m", "node.dicom.receivers", "--config", str(self.cfg.source_path),
               "--parent-pid", str(os.getpid()), "--index", str(index), "--ready-fd", str(ready_w)]
        if rearm:
            cmd.append("--rearm-timers")
        try:
            self.procs[index] = subprocess.Popen(cmd, pass_fds=(ready_w,))
        finally:
            os.close(ready_w)
        log.info("receiver %d: process %d started", index, self.procs[index].pid)
        return ready_r

    def start(self, ready_timeout: float = 60.0) -> None:
        """Start receivers 1..count-1 and wait until each listens (or exited, or ``ready_timeout`` passed).

        ``serve`` binds its own SCP after this: by the time the port answers, every receiver takes its share.
        """
        pending = [self._spawn(index, rearm=False) for index in range(1, self.count)]
        deadline = time.monotonic() + ready_timeout
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(pending, [], [], max(0.0, deadline - time.monotonic()))
            for fd in readable:  # one byte: listening; end of file: it exited first (restarted later)
                os.read(fd, 1)
                os.close(fd)
                pending.remove(fd)
        for fd in pending:
            log.error("a receiver did not report listening within %.0f s", ready_timeout)
            os.close(fd)

    def restart_dead(self) -> None:
        """Restart every receiver that exited (called from ``serve``'s supervision loop)."""
        if self._stopping:
            return
        for index, proc in list(self.procs.items()):
            if proc.poll() is not None:
                log.error("receiver %d (process %d) exited with %s; restarting it", index, proc.pid, proc.returncode)
                os.close(self._spawn(index, rearm=True))  # nobody waits for a restarted receiver

    def signal_stop(self) -> None:
        """SIGTERM every receiver: each stops accepting and drains its associations (in parallel with serve's)."""
        self._stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, drain_seconds: float) -> None:
        """Wait for the receivers told to stop; kill those still running after the drain time."""
        deadline = time.monotonic() + drain_seconds + 5.0
        for index, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("receiver %d (process %d) did not drain in time; killing it", index, proc.pid)
                proc.kill()
                proc.wait()


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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m node.dicom.receivers --config F --parent-pid P --index I``: started by ``serve`` only."""
    p = argparse.ArgumentParser(prog="python -m node.dicom.receivers")
    p.add_argument("--config", required=True)
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--rearm-timers", action="store_true")
    p.add_argument("--ready-fd", type=int, help="pipe to write one byte to once listening")
    args = p.parse_args(argv)
    cfg = load_config(Path(args.config))
    setup_logging(cfg.log_level)
    return run_receiver(cfg, args.index, args.parent_pid, args.rearm_timers, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
