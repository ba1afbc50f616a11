"""Event-driven waits for pynetdicom's reactor threads, in place of their polling sleeps.

pynetdicom 3 runs two polling loops per association: the DUL thread sleeps 1 ms whenever the socket has nothing
and no primitive waits to be sent, and the association thread sleeps 1 ms before every look at the DIMSE queue.
One C-STORE crosses those loops three times (request complete -> handler -> response sent -> next request
seen), so on one association about 3 ms of every instance were spent asleep (~240 instances/s where dcmtk's
storescp takes ~600).

The node first shortened those sleeps to 0.1 ms while an association was busy. That bought the latency back
but paid for it in CPU: each reactor woke ~10,000 times a second, and on a quiet machine (perf and /proc, 1,024
CT slices, one association) the wake-ups and their GIL hand-overs were ~1.5 ms of the ~6 ms of CPU per instance.
With several busy associations fast polling had to be switched off altogether. Here a reactor instead waits
until there is work, and otherwise for the same 1 ms pynetdicom sleeps (so an idle association costs what it
always did, and every check pynetdicom makes per loop still runs at least once a millisecond):

* the DUL thread waits in ``select`` on its socket and on a :class:`Waker` that is set whenever a primitive is
  queued for it to send (:func:`wait_readable`);
* the association thread waits on its DIMSE message queue's condition (:func:`wait_for_queue`).

Both waits release the GIL. :func:`node.dicom.pynetdicom_patches.install_reactor_waits` wires them into the
reactors; this module knows nothing of pynetdicom.
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
        except OSError:  # already set (pipe full), or closed meanwhile
            pass

    def clear(self) -> None:
        """Reset after a wake was seen."""
        try:
            os.read(self.read_fd, 8 if _EVENTFD else 4096)
        except OSError:
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
    """Return when ``sock`` has data (or was closed), ``waker`` was woken, or after ``seconds``.

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
    except (OSError, ValueError):  # the socket was closed under us: the reactor finds out on its next loop
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

    ``q.put`` is wrapped on that queue object only; the waker's descriptor is closed when ``owner`` is
    garbage-collected. The waker is set once when made, so an item put before the wrapping is not waited past.
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
            waker.wake()
    return waker
