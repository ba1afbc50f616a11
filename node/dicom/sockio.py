"""Socket reads for pynetdicom's associations: one buffer per PDU, and quick ACKs.

:func:`recv_exact` is what :mod:`node.dicom.pynetdicom_patches` gives ``AssociationSocket.recv`` (pynetdicom read a
PDU 4 KiB at a time into a growing bytearray); :class:`QuickAckSocket` is the socket class of the Storage SCP's
accepted connections.
"""

from __future__ import annotations

import socket
from typing import Any

TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def recv_exact(sock: socket.socket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from ``sock`` into one preallocated buffer with ``recv_into``.

    Shorter only when the peer closed the connection; socket errors and timeouts propagate.
    """
    buf = bytearray(nr_bytes)
    view = memoryview(buf)
    nr_read = 0
    try:
        while nr_read < nr_bytes:
            n = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not n:
                break
            nr_read += n
    finally:
        view.release()
    if nr_read < nr_bytes:
        del buf[nr_read:]
    return buf


class QuickAckSocket(socket.socket):
    """A socket that re-arms TCP_QUICKACK after every read (Linux clears it again after a few ACKs).

    Against a sender that keeps Nagle's algorithm on (Debian's dcmtk without TCP_NODELAY=1), the sender holds
    the last small segment of each message until its earlier data is acknowledged, and a receiver delaying its
    ACK turns that into ~40 ms per instance on loopback. Acknowledging at once removes the wait.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        data = super().recv(bufsize, flags)
        try:
            self.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)  # type: ignore[arg-type]
        except OSError:
            pass
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        n = super().recv_into(buffer, nbytes, flags)
        try:
            self.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)  # type: ignore[arg-type]
        except OSError:
            pass
        return n
