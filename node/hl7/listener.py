"""The MLLP listener (``dicom-node mllp``, a process ``serve`` starts and restarts): orders in, ACKs out.

python-hl7's asyncio MLLP server reads the blocks (``limit`` = ``mllp.max_message_bytes``); each message is handled
by :class:`node.hl7.inbound.Inbound` in a worker thread (its database writes block) and answered on the same
connection, which stays open for the next message (a connection idle for ``idle_timeout_seconds`` is closed).
Optional TLS on the same port (``mllp.tls``): the handshake runs in the connection's own coroutine, so a failed
one is known with its peer (a ``tls-failure`` audit event, as for DICOM TLS). A block that is not an MLLP frame
closes the connection; a frame over the limit is answered AR and the connection closed. Every message taken or
refused is an ``hl7-received`` audit event (an ATNA Procedure Record, :mod:`node.audit.workflow_events`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import threading
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from node.config import NodeConfig
from node.hl7.handlers import accepted_types, configure, discover
from node.hl7.inbound import Inbound, Outcome
from node.ops.audit import audit_log

log = logging.getLogger(__name__)


def tls_context(cfg: Any) -> ssl.SSLContext | None:
    """The listener's TLS context (``mllp.tls``), the DICOM TLS profile's settings (node/dicom/tls.py)."""
    if cfg is None:
        return None
    from node.dicom.tls import server_context

    return server_context(cfg)


class MllpListener:
    """``start()`` binds and serves in a background thread with its own event loop; ``stop()`` closes it."""

    def __init__(self, cfg: NodeConfig, store: Any) -> None:
        if cfg.mllp is None:
            raise ValueError("no mllp section in the configuration")
        self.cfg = cfg
        self.section = cfg.mllp
        self.inbound = Inbound(store, self.section.receiving_application, self.section.receiving_facility)
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tls: ssl.SSLContext | None = None

    def _audit(self, out: Outcome, peer: Any) -> None:
        """The trail's ``hl7-received`` line of one message taken or refused (an ATNA Procedure Record)."""
        outcome = {"AA": "success", "AE": "minor-failure"}.get(out.code, "serious-failure")
        host, port = (peer[0], peer[1]) if isinstance(peer, tuple) else (str(peer), None)
        audit_log(self.cfg).record(
            "hl7-received", outcome, message_type=out.message_type or None, control_id=out.control_id or None,
            sending_application=out.sending_application or None, sending_facility=out.sending_facility or None,
            order_control=out.order_control or None, code=out.code, reason=out.reason or None, peer_host=host,
            peer_port=port, tls=self.section.tls is not None)

    async def _serve_client(self, reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            if self._tls is not None:
                try:
                    timeout = min(30.0, self.section.idle_timeout_seconds)
                    await writer.start_tls(self._tls, ssl_handshake_timeout=timeout)
                except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, OSError) as exc:
                    log.warning("MLLP TLS handshake with %s failed: %s", peer_text, type(exc).__name__)
                    audit_log(self.cfg).record("tls-failure", "serious-failure", protocol="MLLP",
                                               peer_host=peer[0] if isinstance(peer, tuple) else str(peer),
                                               peer_port=peer[1] if isinstance(peer, tuple) else None,
                                               reason=f"MLLP TLS handshake failed: {_tls_reason(exc)}")
                    return
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.section.idle_timeout_seconds)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                except InvalidBlockError:
                    log.warning("MLLP peer %s sent bytes that are no MLLP frame: connection closed", peer_text)
                    self._audit(Outcome(None, "none", reason="bytes that are no MLLP frame: connection closed"),
                                peer)
                    return
                except ValueError:  # over max_message_bytes (python-hl7's reader limit)
                    out = self.inbound.refuse_oversized(self.section.max_message_bytes)
                    self._audit(out, peer)
                    writer.writeblock(out.ack)
                    await writer.drain()
                    log.warning("MLLP peer %s sent a message over %d bytes: AR, connection closed", peer_text,
                                self.section.max_message_bytes)
                    return
                out = await self.loop.run_in_executor(None, self.inbound.handle, bytes(block), peer_text)
                self._audit(out, peer)
                if out.ack is None:
                    return
                writer.writeblock(out.ack)
                await writer.drain()
                level = logging.INFO if out.code == "AA" else logging.WARNING
                log.log(level, "HL7 %s %s from %s: %s%s", out.message_type or "?", out.control_id or "-", peer_text,
                        out.code, f" ({out.reason})" if out.reason else "")
        except ssl.SSLError as exc:
            log.warning("MLLP TLS with %s failed: %s", peer_text, exc)
            audit_log(self.cfg).record("tls-failure", "serious-failure", protocol="MLLP",
                                       peer_host=peer[0] if isinstance(peer, tuple) else str(peer),
                                       reason=f"MLLP TLS failed: {type(exc).__name__}")
        finally:
            writer.close()

    async def _start(self) -> None:
        self._tls = tls_context(self.section.tls)  # the handshake runs in _serve_client (its failures are audited)
        self.server = await start_hl7_server(
            self._serve_client, self.section.host, self.section.port, limit=self.section.max_message_bytes,
            reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "MllpListener":
        """Bind and serve; raises what binding raised (a port in use, TLS files)."""
        configure(self.cfg)  # handlers read the node's configuration (node.hl7.handlers.node_config)
        discover()
        self._thread = threading.Thread(target=self._run, name="mllp", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        log.info("MLLP listener on %s:%d%s taking %s", self.section.host, self.port,
                 " (TLS)" if self.section.tls else "", ", ".join(sorted(accepted_types())))
        return self

    def stop(self) -> None:
        """Stop accepting, close the server, end the loop."""
        if self.server is None:
            return

        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)


def _tls_reason(exc: BaseException) -> str:
    """Why a handshake failed, without the peer's data: the SSL reason (e.g. CERTIFICATE_VERIFY_FAILED) or the type."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__} {reason}" if reason else type(exc).__name__


def run_listener(cfg: NodeConfig, parent_pid: int | None = None) -> int:
    """``dicom-node mllp``: the listener until SIGTERM/SIGINT or the parent's death; returns 0."""
    from node.ops.process import die_with_parent
    from node.store.state import Store

    if parent_pid is not None:
        die_with_parent()
        if os.getppid() != parent_pid:
            return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    store = Store.open(cfg.database_url, sqlite_synchronous=cfg.database.sqlite_synchronous)
    listener = MllpListener(cfg, store).start()
    while not stop.wait(1.0):
        if parent_pid is not None and os.getppid() != parent_pid:
            break
    listener.stop()
    store.engine.dispose()
    log.info("MLLP listener stopped")
    return 0
