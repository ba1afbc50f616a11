"""Every change the node makes to pynetdicom's behaviour, in one place.

The node needs a few things pynetdicom 3 does not do (or does slowly). Each is a :class:`Patch` in
:mod:`node.dicom.pynetdicom_checked` (re-exported here): the problem, the measured effect, the pynetdicom version it
was checked against and the pynetdicom code it depends on, with a SHA-256 of that code's source.
``tests/test_pynetdicom_patches.py`` recomputes the digests: when pynetdicom changes one of those functions the
test names the patch to re-check (and then its digest is recorded anew there).

Patches and where their code lives:

* settings (``_config``): chunked receive to a file, no identifier logging (PHI), no handler logging;
* reactor waits: the waits are :mod:`node.dicom.netpoll`, installed here into ``dul`` and ``association``;
* buffered receive: ``AssociationSocket.recv`` fills one buffer with ``recv_into`` (:mod:`node.dicom.sockio`); P-DATA in Sta6 skips the queues;
* direct encodings (:mod:`node.dicom.dimse_fast`): C-STORE responses and received files' meta as bytes;
* negotiation's UIDs checked once per process (:mod:`node.dicom.uidmemo`);
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

import logging
import socket
import ssl
import struct
import threading
import time as _time
from types import SimpleNamespace
from typing import Any, Callable

import pynetdicom
from pynetdicom import (_config, association, dimse, dimse_messages, dul, evt, pdu_items, pdu_primitives,
                        presentation, transport, utils)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from node.dicom import dimse_fast, netpoll, receive_guard, sockio, uidmemo
from node.dicom.pynetdicom_checked import (PATCHES, PYNETDICOM_CHECKED, Patch, changed_sources,  # noqa: F401
                                          source_digest)

log = logging.getLogger(__name__)

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
    install_reactor_waits()
    install_buffered_receive()
    install_direct_encodings()
    install_uid_memo()
    install_receive_guard()


# --- reactor waits -------------------------------------------------------------------------------------------

class _ReactorTime(SimpleNamespace):
    """The ``time`` module with :func:`_reactor_sleep` in place of ``sleep``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def _reactor_sleep(seconds: float) -> None:
    """``time.sleep`` as pynetdicom's reactors call it: wait for work, never longer than ``seconds``."""
    thread = threading.current_thread()
    if isinstance(thread, dul.DULServiceProvider):
        assoc_socket = thread.socket
        sock = getattr(assoc_socket, "socket", None) if assoc_socket is not None else None
        netpoll.wait_readable(sock, netpoll.waker_of(thread, thread.to_provider_queue), seconds)
    elif isinstance(thread, association.Association):
        netpoll.wait_for_queue(thread.dimse.msg_queue, seconds)
    else:
        _time.sleep(seconds)


_waits_installed = False


def install_reactor_waits() -> None:
    """Give pynetdicom's DUL and association reactors event-driven waits (idempotent, process-wide).

    pynetdicom's reactors call ``time.sleep`` through their modules' global ``time``; only that global is
    replaced, so ``time.sleep`` everywhere else is untouched, and in those modules a thread other than a
    reactor sleeps exactly as before.
    """
    global _waits_installed
    if _waits_installed:
        return
    proxy = _ReactorTime(sleep=_reactor_sleep)
    dul.time = proxy  # type: ignore[attr-defined]
    association.time = proxy  # type: ignore[attr-defined]
    _waits_installed = True


# --- buffered receive ---------------------------------------------------------------------------------------

_PDU_EVENTS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)


def _recv_exact(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` read into one buffer (short only if the peer closed)."""
    return sockio.recv_exact(self.socket, nr_bytes)


def _fast_p_data(provider: Any) -> bool:
    """True when a P-DATA-TF PDU may skip the queues and FSM: Sta6, nothing queued before it, nobody listening."""
    if provider.state_machine.current_state != "Sta6":
        return False
    if not provider.event_queue.empty() or not provider._recv_pdu.empty():
        return False
    return not any(provider.assoc.get_handlers(e) for e in _PDU_EVENTS)


def _read_pdu_data(self: Any) -> None:
    """``DULServiceProvider._read_pdu_data``, unchanged except for a fast path for P-DATA-TF in Sta6.

    pynetdicom decodes every PDU into PDU item objects, queues an event and the PDU, and lets the state machine
    pass the PDU (Sta6 + Evt10 -> DT-2) to ``dimse.receive_primitive`` as a P-DATA primitive of ``bytes`` copies.
    For a P-DATA-TF in Sta6 with nothing queued and no handler bound to the PDU/data/FSM events, this calls
    ``receive_primitive`` directly, with views into the received buffer: the same action in the same thread,
    without two queue hops, the PDU objects and two copies of each fragment. Everything else goes the stock way.
    """
    sock = self.socket
    try:
        head = sock.recv(6)
    except (OSError, TimeoutError) as exc:
        dul.LOGGER.error("Connection closed before the entire PDU was received")
        dul.LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    try:
        pdu_type, _, pdu_length = struct.unpack(">BBL", head)
    except struct.error:
        self.event_queue.put("Evt17")
        return
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        dul.LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    try:
        body = sock.recv(pdu_length)
    except (OSError, TimeoutError) as exc:
        dul.LOGGER.error("Connection closed before the entire PDU was received")
        dul.LOGGER.exception(exc)
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        dul.LOGGER.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + pdu_length} bytes "
                         "received)")
        self.event_queue.put("Evt17")
        return
    if pdu_type == 0x04 and _fast_p_data(self):
        pdvs = dimse_fast.split_pdvs(body)
        if pdvs is not None:
            primitive = P_DATA()
            primitive._presentation_data_value_list = pdvs  # the setter accepts bytes only; views are read alike
            try:
                self.assoc.dimse.receive_primitive(primitive)  # DT-2
            except Exception:
                dul.LOGGER.error("State Machine received an exception attempting to perform the action 'DT-2' "
                                 "while in state 'Sta6'")
                self.kill_dul()
                raise
            return
    try:
        pdu, event = self._decode_pdu(head + body)
        self.event_queue.put(event)
    except Exception as exc:
        dul.LOGGER.error("Unable to decode the received PDU data")
        dul.LOGGER.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


# --- direct encodings --------------------------------------------------------------------------------------

def _original(obj: Any) -> Any:
    """pynetdicom's own function behind one of ours (itself when not replaced)."""
    return getattr(obj, "__pynetdicom_original__", obj)


def _replace(owner: Any, name: str, new: Callable[..., Any]) -> None:
    """``owner.name = new``, remembering pynetdicom's function (for the digest checks and a second install)."""
    current = getattr(owner, name)
    if current is not new:
        new.__pynetdicom_original__ = _original(current)  # type: ignore[attr-defined]
        setattr(owner, name, new)


_stock_send_msg = _original(dimse.DIMSEServiceProvider.send_msg)
_stock_write_file_meta_info = _original(dimse_messages.write_file_meta_info)
_META_TAGS = frozenset({0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013})


def _send_msg(self: Any, primitive: Any, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg``; a plain C-STORE response is encoded directly (one PDV, as pynetdicom)."""
    if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None and primitive.OffendingElement is None
            and primitive.AffectedSOPClassUID and primitive.AffectedSOPInstanceUID and primitive.Status is not None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
        try:
            command = dimse_fast.c_store_rsp_command(primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                                                     primitive.Status, primitive.AffectedSOPInstanceUID)
        except (UnicodeEncodeError, struct.error):
            command = None
        if command is not None and (not self.maximum_pdu_size or len(command) <= self.maximum_pdu_size - 6):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
            self.dul.send_pdu(pdata)
            return
    _stock_send_msg(self, primitive, context_id)


def _write_file_meta_info(fp: Any, file_meta: Any, enforce_standard: bool = True) -> None:
    """``write_file_meta_info`` as ``decode_msg`` calls it: what ``create_file_meta`` made is encoded directly."""
    if set(file_meta.keys()) == _META_TAGS and file_meta.FileMetaInformationVersion == b"\x00\x01":
        try:
            fp.write(dimse_fast.file_meta_group(
                file_meta.MediaStorageSOPClassUID, file_meta.MediaStorageSOPInstanceUID, file_meta.TransferSyntaxUID,
                file_meta.ImplementationClassUID, file_meta.ImplementationVersionName))
            return
        except (UnicodeEncodeError, AttributeError, struct.error):
            pass
    _stock_write_file_meta_info(fp, file_meta, enforce_standard=enforce_standard)


def install_direct_encodings() -> None:
    """C-STORE responses and received files' meta through :mod:`node.dicom.dimse_fast` (idempotent)."""
    _replace(dimse.DIMSEServiceProvider, "send_msg", _send_msg)
    _replace(dimse_messages, "write_file_meta_info", _write_file_meta_info)


def install_buffered_receive() -> None:
    """Read PDUs with :func:`_recv_exact`, P-DATA through :func:`_read_pdu_data` (idempotent, process-wide)."""
    _replace(transport.AssociationSocket, "recv", _recv_exact)
    _replace(dul.DULServiceProvider, "_read_pdu_data", _read_pdu_data)


_uid_memo: uidmemo.ValidUidMemo | None = None


def install_uid_memo() -> None:
    """Negotiation's UIDs checked once per process (:mod:`node.dicom.uidmemo`), not twice per association."""
    global _uid_memo
    if _uid_memo is None:
        _uid_memo = uidmemo.ValidUidMemo(_original(utils.set_uid))
    for module in (pdu_items, pdu_primitives, presentation):
        _replace(module, "set_uid", _uid_memo)


# --- receive guard -------------------------------------------------------------------------------------------

def received_file(event: Any) -> receive_guard.GuardedTempFile | None:
    """The open :class:`~node.dicom.receive_guard.GuardedTempFile` of a C-STORE event (None when not chunked)."""
    f = getattr(event.request, "_dataset_file", None)
    return f if isinstance(f, receive_guard.GuardedTempFile) else None


def install_receive_guard() -> None:
    """Make pynetdicom's chunked receive write through :class:`node.dicom.receive_guard.GuardedTempFile`."""
    dimse_messages.NamedTemporaryFile = receive_guard.GuardedTempFile  # type: ignore[attr-defined,assignment]


# --- the Storage SCP's server classes ------------------------------------------------------------------------

_TCP_QUICKACK = sockio.TCP_QUICKACK

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
            client_socket = sockio.QuickAckSocket(fileno=client_socket.detach())
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
