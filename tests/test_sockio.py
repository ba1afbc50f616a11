"""node.dicom.sockio.recv_exact: one buffer per PDU, filled across segments, short only when the peer closed."""

from __future__ import annotations

import socket
import threading

from node.dicom import sockio


def test_recv_exact_reads_across_segments_and_stops_at_close() -> None:
    a, b = socket.socketpair()
    try:
        payload = bytes(range(256)) * 2048  # 512 KiB, more than one socket buffer
        t = threading.Thread(target=lambda: (b.sendall(payload), b.sendall(b"tail"), b.close()))
        t.start()
        got = sockio.recv_exact(a, len(payload))
        assert isinstance(got, bytearray) and got == payload
        assert sockio.recv_exact(a, 10) == b"tail"  # the peer closed: what there was
        assert sockio.recv_exact(a, 10) == b""
        t.join()
    finally:
        a.close()
        b.close()
