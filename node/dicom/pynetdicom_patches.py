"""Every change the node makes to pynetdicom's behaviour, in one place.

The node needs a few things pynetdicom 3 does not do (or does slowly). Each is a :class:`Patch` below: the problem,
the measured effect, the pynetdicom version it was checked against and the pynetdicom code it depends on, with a
SHA-256 of that code's source. ``tests/test_pynetdicom_patches.py`` recomputes the digests: when pynetdicom changes
one of those functions the test names the patch to re-check (and then its digest is recorded anew here).

Patches and where their code lives:

* settings (``_config``): chunked receive to a file, no identifier logging (PHI), no handler logging;
* adaptive reactor polling: the policy is :mod:`node.dicom.netpoll`, installed here into ``dul`` and ``association``;
* full disk while receiving: the guarded file is :mod:`node.dicom.receive_guard`, installed here into
  ``dimse_messages``;
* the Storage SCP's server classes (:class:`NodeAssociationServer`, :class:`SharedPortAssociationServer`, and the
  TLS server of :func:`make_tls_server_class`): TCP_NODELAY + TCP_QUICKACK, cheap per-association context copies,
  SO_REUSEPORT, the TLS handshake in the connection's own thread;
* :func:`track_server`: a server made with ``make_server`` is shut down by ``AE.shutdown()``.

Nothing outside this module assigns to pynetdicom's modules, subclasses its classes or touches its private names.
Each patch is written so that it could be offered upstream as it stands.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import socket
import ssl
import time as _time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import pynetdicom
from pynetdicom import _config, association, dimse_messages, dul
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom import netpoll, receive_guard

log = logging.getLogger(__name__)

#: The pynetdicom release every patch below was read against and measured with.
PYNETDICOM_CHECKED = "3.0.4"


@dataclass(frozen=True)
class Patch:
    """One change to pynetdicom: why, what it relies on, and the digests of the pynetdicom code it was checked with."""

    name: str
    problem: str
    relies_on: tuple[str, ...]  # private names and behaviours of pynetdicom the patch depends on
    sources: dict[str, str]  # "module:Qualified.name" -> SHA-256 of inspect.getsource() at PYNETDICOM_CHECKED


PATCHES: tuple[Patch, ...] = (
    Patch(
        "settings",
        "received data sets streamed to a file (STORE_RECV_CHUNKED_DATASET); C-FIND/C-GET/C-MOVE identifiers "
        "(PHI) never logged; no per-message handler logging",
        ("_config.STORE_RECV_CHUNKED_DATASET", "_config.LOG_REQUEST_IDENTIFIERS", "_config.LOG_RESPONSE_IDENTIFIERS",
         "_config.LOG_HANDLER_LEVEL"),
        {},
    ),
    Patch(
        "adaptive polling",
        "the DUL and association reactors sleep 1 ms per idle loop: ~3 ms asleep per instance on one association "
        "(~240 instances/s); polled at 0.1 ms while busy (node.dicom.netpoll)",
        ("the module global `time` of pynetdicom.dul and pynetdicom.association (replaced by a proxy whose sleep "
         "is netpoll.adaptive_sleep)",),
        {
            "pynetdicom.dul:DULServiceProvider.run_reactor":
                "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
            "pynetdicom.association:Association._run_reactor":
                "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
        },
    ),
    Patch(
        "receive guard",
        "a failed write (ENOSPC, EIO) of the chunked receive file killed the DIMSE reactor: the peer saw an abort, "
        "not a status; now the SCP answers 0xA700 (node.dicom.receive_guard)",
        ("the module global `NamedTemporaryFile` of pynetdicom.dimse_messages",
         "decode_msg writes fragments with `.write()` and flushes with `.file.flush()`; `.name` is the path"),
        {
            "pynetdicom.dimse_messages:DIMSEMessage.decode_msg":
                "f51c777e841a76beeaadfe3015bd4f4a68387229a72f13f3a3b7846d01d72284",
        },
    ),
    Patch(
        "cheap context copies",
        "every association deep-copied the server's 170 supported contexts (~44 ms, the whole cost of a "
        "one-instance association); a copy of each context's attributes with its lists copied is as deep",
        ("AssociationServer.contexts (a list deep-copied per association)",
         "PresentationContext holds only immutable values and lists (e.g. _transfer_syntax)"),
        {
            "pynetdicom.transport:RequestHandler._create_association":
                "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
            "pynetdicom.transport:AssociationServer.__init__":
                "edacb98bdfb7b9744194698d47fa51d4e2d5c9ed02ef5fb5181f381b31118423",
            "pynetdicom.presentation:PresentationContext.__init__":
                "37a8842ac07cd8f364dba03f5f7a59c23a0068341873edd81d367ad0c75596d9",
        },
    ),
    Patch(
        "nodelay and quick ACKs",
        "against a sender that keeps Nagle's algorithm on (dcmtk without TCP_NODELAY=1) a delayed ACK costs ~40 ms "
        "per instance on loopback (~20/s); TCP_NODELAY and re-armed TCP_QUICKACK on accepted sockets (~140/s)",
        ("AssociationServer.get_request returns the accepted socket (wrapped only when ssl_context is set)",
         "AssociationSocket.recv calls socket.recv on that socket"),
        {
            "pynetdicom.transport:AssociationServer.get_request":
                "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300",
            "pynetdicom.transport:AssociationSocket.recv":
                "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
        },
    ),
    Patch(
        "shared port",
        "one receiving process is bound by its GIL; SO_REUSEPORT lets node.receivers processes share the port "
        "(4 associations, 2 cores: ~145 -> ~230 instances/s)",
        ("AssociationServer.server_bind binds self.socket",),
        {
            "pynetdicom.transport:AssociationServer.server_bind":
                "cf69278a05a5c777b7e9e9af0769e3102618027b2ec8035a30af8cc370ebdae6",
        },
    ),
    Patch(
        "TLS handshake per connection",
        "with ssl_context the handshake runs in the accept loop: one client that never sends a ClientHello stalls "
        "every new association; the handshake runs in the connection's thread, bounded by a timeout",
        ("ThreadedAssociationServer.process_request_thread(request, client_address) serves one connection",
         "ApplicationEntity.make_server instantiates server_class itself (the SSL context travels in the class)"),
        {
            "pynetdicom.transport:ThreadedAssociationServer.process_request_thread":
                "9e76e9b9c8a3d8b18bb1df7ac652c86f21b4aaaf39e10deca9312f91a7c21a8a",
            "pynetdicom.ae:ApplicationEntity.make_server":
                "6569298ac5cf837c040e6e5bcf3761f69f3792b21b15085f34ebbafcc29b9904",
        },
    ),
    Patch(
        "server tracking",
        "a server made with make_server (to choose its server_class) is unknown to AE.shutdown(); it is added to "
        "the AE's private server list, as start_server does",
        ("ApplicationEntity._servers",),
        {
            "pynetdicom.ae:ApplicationEntity.shutdown":
                "3084723b79cf471ee5866c61327fc3a7af8f3976791a3c946baec4b15f5c6d49",
        },
    ),
)


def source_digest(target: str) -> str:
    """SHA-256 of ``inspect.getsource`` of ``"module:Qualified.name"`` (a pynetdicom function or method)."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def changed_sources() -> list[tuple[Patch, str]]:
    """(patch, target) for every pynetdicom function whose source differs from the one the patch was checked with."""
    return [(patch, target) for patch in PATCHES for target, digest in patch.sources.items()
            if source_digest(target) != digest]


_version_checked = False


def _check_version() -> None:
    global _version_checked
    if not _version_checked and pynetdicom.__version__ != PYNETDICOM_CHECKED:
        log.warning("pynetdicom %s: the node's patches (node.dicom.pynetdicom_patches) were checked against %s",
                    pynetdicom.__version__, PYNETDICOM_CHECKED)
    _version_checked = True


# --- settings ------------------------------------------------------------------------------------------------

def quiet_identifiers() -> None:
    """Query/retrieve identifiers are PHI: pynetdicom must not log them (as SCP or as SCU)."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings and patches the node relies on (idempotent)."""
    _check_version()
    _config.STORE_RECV_CHUNKED_DATASET = True
    quiet_identifiers()
    _config.LOG_HANDLER_LEVEL = "none"
    install_adaptive_polling()
    install_receive_guard()


# --- adaptive polling ----------------------------------------------------------------------------------------

class _TimeProxy(SimpleNamespace):
    """The ``time`` module with :func:`node.dicom.netpoll.adaptive_sleep` in place of ``sleep``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


_polling_installed = False


def install_adaptive_polling() -> None:
    """Give pynetdicom's DUL and association reactors the adaptive sleep (idempotent, process-wide).

    pynetdicom's reactors call ``time.sleep`` through their modules' global ``time``; only that global is
    replaced, so ``time.sleep`` everywhere else is untouched.
    """
    global _polling_installed
    if _polling_installed:
        return
    proxy = _TimeProxy(sleep=netpoll.adaptive_sleep)
    dul.time = proxy  # type: ignore[attr-defined]
    association.time = proxy  # type: ignore[attr-defined]
    _polling_installed = True


# --- receive guard -------------------------------------------------------------------------------------------

def install_receive_guard() -> None:
    """Make pynetdicom's chunked receive write through :class:`node.dicom.receive_guard.GuardedTempFile`."""
    dimse_messages.NamedTemporaryFile = receive_guard.GuardedTempFile  # type: ignore[attr-defined,assignment]


# --- the Storage SCP's server classes ------------------------------------------------------------------------

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _QuickAckSocket(socket.socket):
    """A socket that re-arms TCP_QUICKACK after every read (Linux clears it again after a few ACKs).

    Against a sender that keeps Nagle's algorithm on (Debian's dcmtk without TCP_NODELAY=1), the sender holds
    the last small segment of each message until its earlier data is acknowledged, and a receiver delaying its
    ACK turns that into ~40 ms per instance on loopback. Acknowledging at once removes the wait.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        data = super().recv(bufsize, flags)
        try:
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]
        except OSError:
            pass
        return data


def _copy_context(cx: PresentationContext) -> PresentationContext:
    new = PresentationContext.__new__(PresentationContext)
    new.__dict__.update({k: list(v) if isinstance(v, list) else v for k, v in vars(cx).items()})
    return new


class _ContextList(list):
    """The server's supported contexts, copied cheaply for each association.

    pynetdicom deep-copies the acceptor's contexts for every association; with every storage SOP class in every
    transfer syntax (170 contexts) ``copy.deepcopy`` took ~44 ms, which is the whole cost of an association that
    brings one instance (as many modalities send). A context holds UIDs (immutable strings), None/bool/int and
    one list of transfer syntaxes, so a copy of its attributes with that list copied is a deep copy.
    """

    def __deepcopy__(self, memo: dict) -> list[PresentationContext]:
        return [_copy_context(cx) for cx in self]


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with Nagle's algorithm off (and quick ACKs on Linux) on every accepted socket.

    A sender that waits for each C-STORE response would otherwise pay the delayed-ACK penalty (~40 ms per
    instance on loopback). The supported contexts are copied cheaply per association (:class:`_ContextList`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _ContextList(self.contexts)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:  # type: ignore[override]
        client_socket, address = super().get_request()
        try:
            client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if _TCP_QUICKACK is not None and type(client_socket) is socket.socket:  # not a TLS socket
            timeout = client_socket.gettimeout()
            client_socket = _QuickAckSocket(fileno=client_socket.detach())
            client_socket.settimeout(timeout)
            try:
                client_socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                pass
        return client_socket, address


class SharedPortAssociationServer(NodeAssociationServer):
    """The same server bound with SO_REUSEPORT, so that several receiver processes listen on one port
    (``node.receivers``, :mod:`node.dicom.receivers`); Linux spreads new connections across them."""

    def server_bind(self) -> None:  # type: ignore[override]
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


HandshakeFailed = Callable[[tuple, str], None]
_tls_log = logging.getLogger("node.dicom.tls")  # the TLS listener's log, as before the move


def make_tls_server_class(base: type, context: ssl.SSLContext, handshake_timeout: float,
                          on_failure: HandshakeFailed | None = None) -> type:
    """A subclass of ``base`` (a ThreadedAssociationServer) that handshakes in the connection's own thread.

    pynetdicom's ``AssociationServer.get_request`` wraps the accepted socket with ``ssl_context.wrap_socket``,
    which performs the handshake in the accept loop: one client that opens a TCP connection and never sends a
    ClientHello blocks every new association until the network timeout. pynetdicom's ``make_server``
    instantiates ``server_class`` itself, so the context travels in the class; the server's own ``ssl_context``
    stays None, so its accept loop never touches TLS.
    """

    class TLSAssociationServer(base):  # type: ignore[misc, valid-type]
        tls_context = context
        tls_handshake_timeout = handshake_timeout

        def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
            tls_sock = self._handshake(request, client_address)
            if tls_sock is None:
                return
            super().process_request_thread(tls_sock, client_address)

        def _handshake(self, sock: socket.socket, client_address: tuple) -> ssl.SSLSocket | None:
            previous = sock.gettimeout()
            try:
                sock.settimeout(self.tls_handshake_timeout)
                tls_sock = self.tls_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                tls_sock.do_handshake()
                tls_sock.settimeout(previous)
                return tls_sock
            except (OSError, ssl.SSLError, ValueError) as exc:
                why = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else type(exc).__name__
                detail = getattr(exc, "reason", None) or why
                _tls_log.warning("TLS handshake with %s:%s failed: %s", client_address[0], client_address[1], detail)
                if on_failure is not None:
                    try:
                        on_failure(client_address, str(detail))
                    except Exception:  # an audit failure must not take the server down
                        _tls_log.exception("TLS failure hook failed")
                try:
                    sock.close()
                except OSError:
                    pass
                return None

    return TLSAssociationServer


def track_server(ae: Any, server: Any) -> None:
    """Let ``ae.shutdown()`` stop ``server`` (made with ``make_server``), as ``start_server`` does for its own."""
    ae._servers.append(server)
