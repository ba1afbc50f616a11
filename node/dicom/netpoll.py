"""Event-driven waits for pynetdicom's reactor threads (in place of their 1 ms polling sleeps).

pynetdicom 3 runs two polling loops per association: the DUL thread sleeps 1 ms whenever the socket has nothing
and no primitive waits to be sent, and the association thread sleeps 1 ms before every look at the DIMSE queue.
One C-STORE crosses those loops three times (request complete -> handler -> response sent -> next request
seen), so on one association about 3 ms of every instance were spent asleep (~240 instances/s where dcmtk's
storescp takes ~600).

The node first shortened those sleeps to 0.1 ms while an association was busy. That bought the latency back but
cost CPU: profiled with py-spy (``--gil``, 512 CT slices, one association) the reactors' wake-ups held the GIL
for ~29 % of the SCP's Python time, ~2 ms per instance, and with several busy associations fast polling had to
be switched off altogether. This module replaces the sleep with a wait that ends as soon as there is work, and
otherwise after the same 1 ms pynetdicom sleeps (so an idle association costs what it always did):

* the DUL thread waits in ``select`` on its socket and on a :class:`Waker` that is set whenever a primitive is
  queued for it to send (:func:`wait_readable`);
* the association thread waits on its DIMSE message queue's condition (:func:`wait_for_queue`).

Both waits release the GIL. :func:`node.dicom.pynetdicom_patches.install_reactor_waits` wires them into the
reactors; this module knows nothing of pynetdicom. :func:`recv_exact` is the receive buffer the same module
gives pynetdicom's sockets, :class:`QuickAckSocket` the socket class of accepted connections.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time as _time
import weakref
from typing import Any

TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_EVENTFD = hasattr(os, "eventfd")
_ONE = (1).to_bytes(8, "little")


class Waker:
    """A file descriptor a producer sets (:meth:`wake`) and a reactor waits on with ``select``.

    An eventfd on Linux, a non-blocking pipe elsewhere. Setting it when it is already set is harmless, and a
    wake that comes before the wait is not lost: the descriptor stays readable until :meth:`clear`.
    """

    def __init__(self) -> None:
        if _EVENTFD:
            self.read_fd = self.write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self.read_fd, self.write_fd = os.pipe()
            os.set_blocking(self.read_fd, False)
            os.set_blocking(self.write_fd, False)
        self.closed = False

    def fileno(self) -> int:
        """The descriptor that becomes readable when woken (for ``select``)."""
        return self.read_fd

    def wake(self) -> None:
        """Make the next (or current) wait return at once."""
        if self.closed:
            return
        try:
            os.write(self.write_fd, _ONE if _EVENTFD else b"\x01")
        except (BlockingIOError, OSError):  # already set (pipe full), or closed meanwhile
            pass

    def clear(self) -> None:
        """Reset after a wake was seen."""
        try:
            os.read(self.read_fd, 8 if _EVENTFD else 4096)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        """Release the descriptor(s); later wakes do nothing."""
        if self.closed:
            return
        self.closed = True
        for fd in {self.read_fd, self.write_fd}:
            try:
                os.close(fd)
            except OSError:
                pass


def wait_readable(sock: socket.socket | None, waker: Waker, seconds: float) -> None:
    """Return when ``sock`` has data (or is closed), ``waker`` was woken, or after ``seconds``.

    A TLS socket may hold decrypted data that ``select`` cannot see: then it returns at once.
    """
    if sock is None:
        _time.sleep(seconds)
        return
    pending: Any = getattr(sock, "pending", None)
    if pending is not None:
        try:
            if pending():
                return
        except (OSError, ValueError):
            return
    try:
        readable, _, _ = select.select([sock, waker], [], [], seconds)
    except (OSError, ValueError):  # the socket was closed under us: let the reactor find out
        _time.sleep(seconds)
        return
    if waker in readable:
        waker.clear()


def wait_for_queue(q: "queue.Queue[Any]", seconds: float) -> None:
    """Return when ``q`` holds an item, or after ``seconds`` (nothing is taken off the queue)."""
    with q.not_empty:
        if not q.queue:
            q.not_empty.wait(seconds)


_wakers: "weakref.WeakKeyDictionary[Any, Waker]" = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


def waker_of(owner: Any, q: "queue.Queue[Any]") -> Waker:
    """The :class:`Waker` of ``owner`` (made on first use), woken by every ``q.put`` from then on.

    ``q.put`` is wrapped on the queue object itself (no other queue changes); the waker's descriptor is closed
    when ``owner`` is garbage-collected.
    """
    waker = _wakers.get(owner)
    if waker is not None:
        return waker
    with _wakers_lock:
        waker = _wakers.get(owner)
        if waker is None:
            made = waker = Waker()
            put = q.put

            def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
                put(item, block, timeout)
                made.wake()

            q.put = put_and_wake  # type: ignore[method-assign]
            _wakers[owner] = waker
            weakref.finalize(owner, waker.close)
    return waker


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
