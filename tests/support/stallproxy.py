"""A TCP proxy in front of a real DICOM peer that can withhold the peer's DIMSE replies (a stalling PACS).

The association is accepted normally (A-ASSOCIATE-AC passes); while ``stall`` is set, every P-DATA PDU the
peer sends back (C-STORE responses) is held: the peer has stored the instance but the node never sees the
acknowledgement, the worst moment for a crash. With ``stall`` cleared the proxy forwards everything.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from .ports import free_port

P_DATA_TF = 0x04


class StallingProxy:
    def __init__(self, target_port: int, *, stall: bool = True) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.stall = threading.Event()
        if stall:
            self.stall.set()
        self.held_pdus = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> "StallingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._sock.close()
        for s in self._conns:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _recv_exact(self, src: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = src.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _replies(self, src: socket.socket, dst: socket.socket) -> None:
        """Forward the peer's PDUs one by one, holding P-DATA while stalled."""
        try:
            while True:
                header = self._recv_exact(src, 6)
                body = self._recv_exact(src, int.from_bytes(header[2:6], "big"))
                if header[0] == P_DATA_TF and self.stall.is_set():
                    self.held_pdus += 1
                    while self.stall.is_set() and not self._stop.is_set():
                        self._stop.wait(0.1)
                    return  # the node gave up on this association (or was killed): drop the reply
                dst.sendall(header + body)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
