"""MLLP over TCP (or TLS) as an asyncio client: python-hl7's MLLP streams frame and read the blocks.

A block is ``0x0B`` message ``0x1C 0x0D``. :class:`MllpClient` keeps one connection for a batch of messages and
tells a failure before anything reached the peer (``sent`` False: safe to send again) from one after the message
was written (``sent`` True: the peer may have it).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from hl7.mllp import InvalidBlockError, open_hl7_connection


class MllpError(Exception):
    """An exchange that produced no usable answer. ``sent``: the message may have reached the peer."""

    def __init__(self, message: str, *, sent: bool, status: str) -> None:
        super().__init__(message)
        self.sent = sent
        self.status = status


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: int = 0


class MllpClient:
    """One MLLP peer: connect on demand, send a block, read the answer block, within ``timeout`` seconds each."""

    def __init__(self, host: str, port: int, *, timeout: float, max_bytes: int,
                 tls: tuple[ssl.SSLContext, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.tls = tls
        self._conn: _Connection | None = None

    async def _open(self) -> _Connection:
        kwargs = {} if self.tls is None else {"ssl": self.tls[0], "server_hostname": self.tls[1]}
        try:
            reader, writer = await asyncio.wait_for(
                open_hl7_connection(self.host, self.port, limit=self.max_bytes, **kwargs), self.timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise MllpError(f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}",
                            sent=False, status="connect") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    async def exchange(self, data: bytes) -> bytes:
        """Send one message, return the answer block; a reused connection the peer closed is reopened once."""
        reused = self._conn is not None
        try:
            return await self._exchange_once(data)
        except MllpError as exc:
            if not (reused and exc.status == "closed"):
                raise
        # the peer closed the connection after its previous answer (hl7apy's server does): it never read this one
        return await self._exchange_once(data)

    async def _exchange_once(self, data: bytes) -> bytes:
        if self._conn is None:
            self._conn = await self._open()
        conn = self._conn
        try:
            conn.writer.writeblock(data)
            await asyncio.wait_for(conn.writer.drain(), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            await self.close()
            raise MllpError(f"sending failed: {exc or type(exc).__name__}", sent=conn.used == 0,
                            status="network") from None
        try:
            block = await asyncio.wait_for(conn.reader.readblock(), self.timeout)
        except asyncio.IncompleteReadError as exc:
            await self.close()
            if not exc.partial and conn.used > 0:
                raise MllpError("the peer had closed the connection", sent=False, status="closed") from None
            raise MllpError("the peer closed the connection without an answer", sent=True,
                            status="no-answer") from None
        except asyncio.TimeoutError:
            await self.close()
            raise MllpError(f"no answer within {self.timeout:g} s", sent=True, status="timeout") from None
        except (InvalidBlockError, ValueError) as exc:  # ValueError: the answer is over max_message_bytes
            await self.close()
            raise MllpError(f"garbled answer frame: {exc}", sent=True, status="garbled") from None
        except OSError as exc:
            await self.close()
            raise MllpError(f"connection lost: {exc}", sent=True, status="network") from None
        conn.used += 1
        return block

    async def close(self) -> None:
        """Close the connection (if any); never raises."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.writer.close()
        try:
            await asyncio.wait_for(conn.writer.wait_closed(), 2.0)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass
