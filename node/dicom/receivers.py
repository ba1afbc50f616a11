"""Extra receiver processes: ``node.receivers`` > 1 runs that many Storage SCPs on one DICOM port.

One Python process receiving with pynetdicom is bound by its GIL (about 3 ms of CPU per instance in pynetdicom
itself), so parallel senders could not use more than one core. With ``node.receivers: N`` the ``serve`` process
keeps its own SCP (receiver 0, which also serves the TLS port) and starts N-1 child processes running the same
SCP; every one binds the plain port with SO_REUSEPORT and Linux spreads new connections across them.

Each receiver is the whole receive path on its own: durable spool write, group commit into the shared SQLite
database (WAL, ``BEGIN IMMEDIATE``: several writer processes are fine), its own quiet timers. A check is
idempotent and re-arms itself, so it does not matter which process armed it. A restarted receiver re-arms the
timers of every study still receiving, since its predecessor's timers died with it.

``node.receivers`` not set: :func:`node.dicom.cores.auto_receivers` picks the count from the usable cores (1 below
4). Sharing the port would let a second node started on it by mistake take associations silently, so before the
receivers start, :func:`check_port_free` binds the port alone once: if anything listens there, serve fails loudly.

Lifecycle, like the worker's: a receiver that dies is restarted by ``serve``; SIGTERM (sent by ``serve`` when it
drains) stops accepting, lets the associations in progress finish and exits 0; PR_SET_PDEATHSIG kills a
receiver whose ``serve`` died.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

from node.config import NodeConfig

log = logging.getLogger(__name__)


def check_port_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when something already listens on ``host:port``.

    Bound as pynetdicom's server binds (SO_REUSEADDR, so connections in TIME_WAIT do not count) but without
    SO_REUSEPORT: a socket listening there, with or without SO_REUSEPORT, makes this bind fail.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        probe.listen(1)


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
        cmd = [sys.executable, "-m", "node.cli", "receiver", "--config", str(self.cfg.source_path),
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
        if self.count > 1 and self.cfg.node.port:
            try:
                check_port_free(self.cfg.node.host, self.cfg.node.port)
            except OSError as exc:
                raise RuntimeError(f"DICOM port {self.cfg.node.port} is in use (another node?); not sharing it "
                                   f"with SO_REUSEPORT: {exc}") from exc
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
