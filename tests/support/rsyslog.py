"""A throwaway audit record repository for the tests: Debian's ``rsyslogd`` with ``rsyslog-gnutls``.

``start(folder, tls=True, mutual=False)`` runs rsyslogd in the foreground on a free loopback port: imtcp with
the gtls stream driver (RFC 5425) and a test CA (``tests/support/tlscerts.py``), or plain TCP (``tls=False``),
or imudp (``udp=True``); octet-counted frames on TCP; ``maxMessageSize`` raised to 32 KiB as IHE ATNA needs
(rsyslog's default is 8 KiB). Every message it receives is written by rsyslog itself as one JSON line: its own
parse of the RFC 5424 header (PRI, VERSION, TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID, STRUCTURED-DATA), the
MSG and the raw message, so a test checks what the repository understood, not what the node meant.
``messages()`` reads them, ``wait_for(n)`` waits for them, ``stop()`` stops the process the test started
(``restart()`` or ``start()`` again: the same port, the same file). ``syslog_config()`` is the node's
``audit.syslog`` block for it.

    repo = rsyslog.start(tmp_path / "rsyslog", tls=True, mutual=True)
    try:
        ... node config: cfg["audit"] = {"syslog": repo.syslog_config()} ...
        got = repo.wait_for(3)
    finally:
        repo.stop()
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ports import HOST, free_port
from .tlscerts import make_ca
from .tools import stop_started

BOM = "\ufeff"
MAX_MESSAGE_SIZE = "32k"


@dataclass(frozen=True)
class Received:
    """One message as rsyslog parsed it."""

    pri: int
    version: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: str
    raw: str

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8

    @property
    def xml(self) -> bytes:
        """MSG without the byte order mark: the audit message."""
        return (self.msg[1:] if self.msg.startswith(BOM) else self.msg).encode("utf-8")


_TEMPLATE = """template(name="received" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
}"""


class Rsyslog:
    """rsyslogd on ``127.0.0.1:<port>``; received messages in ``folder/received.jsonl``."""

    def __init__(self, folder: Path, *, tls: bool = True, mutual: bool = False, port: int | None = None,
                 udp: bool = False) -> None:
        self.folder = Path(folder)
        self.tls = tls and not udp
        self.udp = udp
        self.mutual = mutual
        self.port = port or (_free_udp_port() if udp else free_port())
        self.proc: subprocess.Popen | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.received_path = self.folder / "received.jsonl"
        if self.tls:
            pki = self.folder / "pki"
            self.ca = make_ca(pki, "audit-ca")
            self.server = self.ca.issue(pki, "audit-repository", server=True)
            self.client = self.ca.issue(pki, "ainode-audit", server=False)  # the node's certificate (mutual TLS)
            self.rogue_ca = make_ca(pki, "rogue-audit-ca")

    def syslog_config(self, **extra: Any) -> dict[str, Any]:
        """The node's ``audit.syslog`` block for this repository."""
        cfg: dict[str, Any] = {"host": HOST, "port": self.port,
                               "transport": "udp" if self.udp else "tls" if self.tls else "tcp",
                               "connect_timeout_seconds": 5, "retry_max_seconds": 1}
        if self.tls:
            cfg["ca_file"] = str(self.ca.cert)
            if self.mutual:
                cfg.update(cert_file=str(self.client.cert), key_file=str(self.client.key))
        cfg.update(extra)
        return cfg

    def _config(self) -> str:
        work = self.folder / "work"
        work.mkdir(exist_ok=True)
        lines = [f'global(workDirectory="{work}" maxMessageSize="{MAX_MESSAGE_SIZE}" '
                 'parser.escapeControlCharactersOnReceive="off"'
                 + (f' defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{self.ca.cert}" '
                    f'defaultNetstreamDriverCertFile="{self.server.cert}" '
                    f'defaultNetstreamDriverKeyFile="{self.server.key}"' if self.tls else "") + ")"]
        if self.tls:
            auth = "x509/certvalid" if self.mutual else "anon"
            lines.append(f'module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" '
                         f'streamDriver.authMode="{auth}")')
        elif self.udp:
            lines.append('module(load="imudp")')
        else:
            lines.append('module(load="imtcp")')
        lines += [_TEMPLATE,
                  'ruleset(name="atna") {',
                  f'  action(type="omfile" file="{self.received_path}" template="received" flushOnTXEnd="on")',
                  "}",
                  f'input(type="imudp" address="{HOST}" port="{self.port}" ruleset="atna")' if self.udp else
                  f'input(type="imtcp" address="{HOST}" port="{self.port}" ruleset="atna" '
                  'supportOctetCountedFraming="on")',
                  f'*.* action(type="omfile" file="{self.folder / "rsyslogd.log"}")']
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20) -> "Rsyslog":
        exe = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        if not Path(exe).exists():
            raise RuntimeError("rsyslogd not found: run scripts/setup.sh (Debian packages rsyslog, rsyslog-gnutls)")
        conf = self.folder / "rsyslog.conf"
        conf.write_text(self._config())
        out = open(self.folder / "stderr.log", "ab")
        self.proc = subprocess.Popen([exe, "-n", "-f", str(conf), "-i", str(self.folder / "rsyslogd.pid")],
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _listening(self.port, udp=self.udp):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "stderr.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"rsyslogd did not start on {HOST}:{self.port}:\n{log}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        stop_started(self.proc)
        self.proc = None

    def restart(self) -> "Rsyslog":
        self.stop()
        return self.start()

    def messages(self) -> list[Received]:
        """Every message received so far, in the order rsyslog wrote them."""
        if not self.received_path.exists():
            return []
        out = []
        for line in self.received_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            out.append(Received(int(d["pri"]), d["version"], d["timestamp"], d["hostname"], d["app_name"],
                                d["procid"], d["msgid"], d["structured_data"], d["msg"], d["raw"]))
        return out

    def wait_for(self, count: int, timeout: float = 60, where: Any = None) -> list[Received]:
        """Wait until at least ``count`` messages (satisfying ``where``, if given) arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if len([m for m in got if where is None or where(m)]) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def __enter__(self) -> "Rsyslog":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start(folder: Path, *, tls: bool = True, mutual: bool = False, port: int | None = None,
          udp: bool = False) -> Rsyslog:
    """A started repository (see the module docstring): TLS (``mutual``: client certificates required), plain
    TCP (``tls=False``) or UDP (``udp=True``)."""
    return Rsyslog(folder, tls=tls, mutual=mutual, port=port, udp=udp).start()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _listening(port: int, udp: bool = False) -> bool:
    """Whether rsyslogd listens on the loopback port yet (from /proc/net: a probe connection would be a session
    rsyslog logs as broken)."""
    target = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp" if udp else "/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == target and (udp or parts[3] == "0A"):  # 0A: LISTEN
            return True
    return False
