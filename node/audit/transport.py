"""One connection to the audit record repository: RFC 5425 (TLS), RFC 6587 (TCP, octet counting), RFC 5426 (UDP).

Syslog over TCP has no acknowledgement of its own, so a batch counts as taken only once the repository's TCP
stack acknowledged every byte of it (``SIOCOUTQ`` reads 0) while the connection was still up: bytes written into
a connection the repository had already closed are sent again on the next one (a repository that stops with
messages read by its kernel but not by itself loses those, as with any RFC 5425 sender). Before each batch the
connection is checked for the repository's close (a syslog receiver never sends data). UDP sends and forgets.
"""

from __future__ import annotations

import fcntl
import select
import socket
import ssl
import struct
import termios
import time
from typing import Sequence

from node.audit.rfc5424 import frame
from node.audit.settings import SyslogSection

TCP_ESTABLISHED, TCP_CLOSE_WAIT = 1, 8
POST_HANDSHAKE_SECONDS = 0.5


class TransportError(OSError):
    """The repository cannot be reached, refused the connection or did not take a batch."""


def tls_context(cfg: SyslogSection) -> ssl.SSLContext:
    """Client context: TLS 1.2+ with BCP 195 suites, the repository's certificate checked against ``ca_file``,
    this node's certificate presented when ``cert_file`` is set (mutual TLS)."""
    from node.config_sections import TlsClientSection
    from node.dicom.tls import client_context

    assert cfg.ca_file is not None
    return client_context(TlsClientSection(ca_file=cfg.ca_file, cert_file=cfg.cert_file, key_file=cfg.key_file,
                                           check_hostname=cfg.check_hostname, server_name=cfg.server_name,
                                           min_version=cfg.min_version))


class Connection:
    """``open()``, then ``send(messages)`` (returns once the repository has them), ``close()``."""

    def __init__(self, cfg: SyslogSection, context: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg
        self.context = context if context is not None or cfg.transport != "tls" else tls_context(cfg)
        self.sock: socket.socket | None = None

    def open(self) -> None:
        cfg = self.cfg
        try:
            if cfg.transport == "udp":
                family = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family[0], socket.SOCK_DGRAM)
                sock.connect(family[4])
                self.sock = sock
                return
            raw = socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_seconds)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.context is not None:
                try:
                    raw = self.context.wrap_socket(raw, server_hostname=cfg.server_name or cfg.host)
                except BaseException:
                    raw.close()
                    raise
            raw.settimeout(cfg.connect_timeout_seconds)
            self.sock = raw
            if self.context is not None and self._refused_after_handshake():
                self.close()
                raise TransportError("the audit repository refused this node after the TLS handshake (a client "
                                     "certificate it does not accept?)")
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"cannot connect to the audit repository {cfg.host}:{cfg.port} "
                                 f"({cfg.transport}): {exc}") from None

    def _refused_after_handshake(self) -> bool:
        """TLS 1.3: a server checks the client's certificate after the client's side of the handshake is done and
        refuses with an alert that may come after the first data; wait that long before sending anything."""
        deadline = time.monotonic() + POST_HANDSHAKE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.sock], [], [], left)[0] and self.closed_by_peer():
                return True
        return False

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def closed_by_peer(self) -> bool:
        """Whether the repository closed (or reset) the connection: readable with nothing to read."""
        sock = self.sock
        if sock is None:
            return True
        if self.cfg.transport == "udp":
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return False
            sock.setblocking(False)
            try:
                return sock.recv(4096) == b""  # data from a syslog receiver: ignored
            finally:
                sock.settimeout(self.cfg.connect_timeout_seconds)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # a TLS record with no data (a TLS 1.3 session ticket)
        except (OSError, ssl.SSLError):
            return True

    def send(self, messages: Sequence[bytes], ack_timeout: float = 30.0) -> None:
        """Write ``messages`` in order; return once the repository's TCP acknowledged them all (TCP, TLS)."""
        sock = self.sock
        if sock is None or self.closed_by_peer():
            raise TransportError("the audit repository closed the connection")
        try:
            if self.cfg.transport == "udp":
                for m in messages:
                    sock.send(m)
                return
            sock.sendall(b"".join(frame(m) for m in messages))
            deadline = time.monotonic() + ack_timeout
            while True:
                state, unacked = _tcp_state(sock)
                if state not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
                    raise TransportError("the audit repository closed the connection before taking the messages")
                if unacked == 0:
                    return
                if time.monotonic() > deadline:
                    raise TransportError(f"the audit repository did not take {unacked} bytes within {ack_timeout:g} s")
                time.sleep(0.002)
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"sending to the audit repository failed: {exc}") from None


def _tcp_state(sock: socket.socket) -> tuple[int, int]:
    """(TCP state, bytes written and not yet acknowledged by the peer) of a connected TCP socket (Linux)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0)))[0]
    return info[0], unacked


def describe(cfg: SyslogSection) -> str:
    """One line for ``check-config``: the repository and how the node reaches it (loads the TLS files)."""
    if cfg.transport == "tls":
        tls_context(cfg)
        mutual = "mutual TLS" if cfg.cert_file else "server certificate checked"
        return f"audit repository {cfg.host}:{cfg.port}: RFC 5425 syslog over TLS ({cfg.min_version}+, {mutual})"
    return f"audit repository {cfg.host}:{cfg.port}: syslog over {cfg.transport.upper()} (no TLS)"
