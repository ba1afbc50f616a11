"""HAProxy (Debian ``haproxy``) in front of several DICOM ports: one AE address for a cluster. Started and stopped by
the test.

- :class:`ShippedHAProxy`: the balancer the project ships, ``deploy/cluster/haproxy.cfg``, run as it is with only its
  addresses and ports replaced (the frontend's bind, each server's DICOM address and the port its ``/readyz`` health
  check reads); a stats socket is added in a second file so the test can read each server's state as HAProxy sees
  it. The nodes' clusters in the tests run behind it (``tests/support/cluster.py``).
- :class:`HAProxy`: a plain round-robin TCP balancer with TCP health checks, for peers without ``/readyz`` (the
  Orthanc servers of ``bench/scale.py``, and node clusters whose HTTP side is off).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .data import REPO
from .ports import HOST, free_port
from .tools import stop_started

SHIPPED_CONFIG = REPO / "deploy" / "cluster" / "haproxy.cfg"

_BIND = re.compile(r"^(?P<lead>\s*bind\s+)(?P<addr>\S*:\d+)(?P<rest>.*)$")
_SERVER = re.compile(r"^(?P<lead>\s*server\s+(?P<name>\S+)\s+)(?P<addr>\S+:\d+)(?P<mid>\s.*?\bport\s+)(?P<check>\d+)"
                     r"(?P<rest>.*)$")


def shipped_config(text: str, port: int, backends: list[tuple[str, int, int]]) -> tuple[str, list[str]]:
    """``text`` (the shipped configuration) with its one ``bind`` put on ``HOST:port`` and its ``server`` lines, in
    order, on ``backends`` ((host, DICOM port, health-check port) per server); everything else unchanged. The server
    names, in order. ValueError when the file's shape differs (one bind; one server line per backend, each with a
    ``check port``): the test must then be brought in line with the file, not the other way round."""
    out, names, binds = [], [], 0
    for line in text.splitlines():
        bind, server = _BIND.match(line), _SERVER.match(line)
        if bind:
            binds += 1
            line = f"{bind['lead']}{HOST}:{port}{bind['rest']}"
        elif server:
            if len(names) >= len(backends):
                raise ValueError(f"{SHIPPED_CONFIG} has more server lines than the {len(backends)} nodes started")
            host, dicom, check = backends[len(names)]
            names.append(server["name"])
            line = f"{server['lead']}{host}:{dicom}{server['mid']}{check}{server['rest']}"
        elif re.match(r"^\s*server\s", line):
            raise ValueError(f"a server line of {SHIPPED_CONFIG} has no 'check port <n>': {line.strip()!r}")
        out.append(line)
    if binds != 1 or len(names) != len(backends):
        raise ValueError(f"{SHIPPED_CONFIG}: expected 1 bind and {len(backends)} server lines, found {binds} and "
                         f"{len(names)}")
    return "\n".join(out) + "\n", names


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

    def config_files(self) -> list[Path]:
        """The configuration file(s) HAProxy is started with (``-f`` each)."""
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(self.config_text())
        return [cfg]

    def start(self, timeout: float = 20) -> "HAProxy":
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(exe).exists():
            raise RuntimeError("haproxy not found: run scripts/setup.sh (Debian package haproxy)")
        self.folder.mkdir(parents=True, exist_ok=True)
        files = [arg for f in self.config_files() for arg in ("-f", str(f))]
        check = subprocess.run([exe, "-c", *files], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c {' '.join(files)}:\n{check.stdout}{check.stderr}")
        self.proc = subprocess.Popen([exe, "-db", *files], stdout=open(self.folder / "haproxy.log", "ab"),
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

    def log(self) -> str:
        path = self.folder / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> "HAProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ShippedHAProxy(HAProxy):
    """``deploy/cluster/haproxy.cfg`` over ``backends`` ((host, DICOM port, HTTP port) per node, in the order of
    the file's server lines): ``leastconn``, ``option httpchk GET /readyz`` every 2 s, out after 2 failures, back
    after 2 passes, as shipped. :meth:`servers` reads each server's state from HAProxy's stats socket."""

    def __init__(self, folder: Path, backends: list[tuple[str, int, int]], *, port: int | None = None,
                 source: Path = SHIPPED_CONFIG) -> None:
        super().__init__(folder, [(h, d) for h, d, _ in backends], port=port)
        self.checked = list(backends)
        self.source = Path(source)
        self.names: list[str] = []

    @property
    def stats_socket(self) -> Path:
        return self.folder / "stats.sock"

    def config_files(self) -> list[Path]:
        text, self.names = shipped_config(self.source.read_text(), self.port, self.checked)
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(text)
        stats = self.folder / "stats.cfg"  # observation only: a second global section, merged by HAProxy
        stats.write_text(f"global\n    stats socket {self.stats_socket} mode 600 level operator\n")
        return [cfg, stats]

    def _ask(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict[str, str]]:
        """Per server of the backend, HAProxy's ``show stat`` row: ``status`` (UP, DOWN, "UP 1/2", "no check"...),
        ``check_status`` (L7OK, L7STS, L4CON...), ``check_code`` (the HTTP status of the last check), ``stot``
        (sessions sent to it so far), ``lastchg`` (seconds since its last state change)."""
        lines = self._ask("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}

    def summary(self) -> dict[str, str]:
        """Per server: status, last check and its HTTP code, e.g. ``{"node-a": "UP L7OK 200"}`` (for messages)."""
        return {name: " ".join(filter(None, (r["status"], r["check_status"], r["check_code"])))
                for name, r in self.servers().items()}

    def state(self, index: int) -> str:
        """The status of the ``index``-th server (the node at that position of ``backends``)."""
        return self.servers()[self.names[index]]["status"]

    def wait_up(self, indices: list[int], timeout: float = 60) -> None:
        """Wait until the servers at these positions are UP: their ``/readyz`` passed ``rise`` checks in a row."""
        deadline = time.monotonic() + timeout
        while not all(self.state(i) == "UP" for i in indices):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the balancer did not take nodes {indices} into its rotation within {timeout} s: "
                                   f"{self.summary()}")
            time.sleep(0.2)
