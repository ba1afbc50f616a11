"""HAProxy (Debian ``haproxy``) in TCP mode in front of several nodes' DICOM ports: one AE address for a
cluster, as any L4 load balancer gives it in production. Started and stopped by the test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .ports import HOST, free_port
from .tools import stop_started


class HAProxy:
    """Round-robin TCP balancing of ``127.0.0.1:<port>`` over ``backends`` ((host, port) pairs), with TCP health
    checks every ``check_ms`` so a killed node leaves the rotation within ~2 checks."""

    def __init__(self, folder: Path, backends: list[tuple[str, int]], *, port: int | None = None,
                 check_ms: int = 500) -> None:
        self.folder = Path(folder)
        self.backends = list(backends)
        self.port = port or free_port()
        self.check_ms = check_ms
        self.proc: subprocess.Popen | None = None

    def config_text(self) -> str:
        servers = "\n".join(f"    server node{i} {h}:{p} check inter {self.check_ms} fall 2 rise 1"
                            for i, (h, p) in enumerate(self.backends))
        return (
            "global\n    maxconn 2000\n\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n"
            "    option redispatch\n    retries 3\n\n"
            f"frontend dicom\n    bind {HOST}:{self.port}\n    default_backend nodes\n\n"
            f"backend nodes\n    balance roundrobin\n{servers}\n")

    def start(self, timeout: float = 20) -> "HAProxy":
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).exists():
            raise RuntimeError("haproxy not found: run scripts/setup.sh (Debian package haproxy)")
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(self.config_text())
        subprocess.run([exe, "-c", "-f", str(cfg)], check=True, capture_output=True, timeout=30)
        self.proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=open(self.folder / "haproxy.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not listen on {HOST}:{self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_started(self.proc)
        self.proc = None

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
