"""node.dicom.netpoll: pynetdicom's reactors wake as soon as there is work, and otherwise wait as they did.

Real sockets, queues and threads; the times asserted are generous bounds (this machine is shared), never values
taken from the code under test.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

import pytest

from node.dicom import netpoll
from node.dicom.pynetdicom_patches import install_reactor_waits


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _later(seconds: float, fn) -> threading.Thread:  # type: ignore[no-untyped-def]
    t = threading.Thread(target=lambda: (time.sleep(seconds), fn()))
    t.start()
    return t


def test_idle_wait_lasts_the_requested_time(pair: tuple[socket.socket, socket.socket]) -> None:
    waker = netpoll.Waker()
    t0 = time.perf_counter()
    netpoll.wait_readable(pair[0], waker, 0.05)
    assert time.perf_counter() - t0 >= 0.045  # nothing to do: as long as pynetdicom's own sleep (scaled up here)
    q: queue.Queue[int] = queue.Queue()
    t0 = time.perf_counter()
    netpoll.wait_for_queue(q, 0.05)
    assert time.perf_counter() - t0 >= 0.045
    waker.close()


def test_data_on_the_socket_ends_the_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    waker = netpoll.Waker()
    t = _later(0.02, lambda: pair[1].sendall(b"x"))
    t0 = time.perf_counter()
    netpoll.wait_readable(pair[0], waker, 5.0)
    assert time.perf_counter() - t0 < 2.0
    t.join()
    waker.close()


def test_a_queued_primitive_wakes_the_wait_even_if_queued_before_it(pair: tuple[socket.socket, socket.socket]) -> None:
    owner = threading.Thread()  # stands for a DUL provider (any object that can be weakly referenced)
    q: queue.Queue[str] = queue.Queue()
    waker = netpoll.waker_of(owner, q)
    assert netpoll.waker_of(owner, q) is waker  # one per owner
    t0 = time.perf_counter()
    netpoll.wait_readable(pair[0], waker, 5.0)  # made set: an item put before the wrapping is not waited past
    assert time.perf_counter() - t0 < 2.0
    t = _later(0.02, lambda: q.put("P-DATA"))
    t0 = time.perf_counter()
    netpoll.wait_readable(pair[0], waker, 5.0)
    assert time.perf_counter() - t0 < 2.0
    t.join()
    q.put("A-RELEASE")  # before the wait: the wake is kept, not lost
    t0 = time.perf_counter()
    netpoll.wait_readable(pair[0], waker, 5.0)
    assert time.perf_counter() - t0 < 2.0
    assert [q.get_nowait(), q.get_nowait()] == ["P-DATA", "A-RELEASE"]  # the queue itself is unchanged
    t0 = time.perf_counter()
    netpoll.wait_readable(pair[0], waker, 0.05)  # cleared: idle again
    assert time.perf_counter() - t0 >= 0.045


def test_a_message_on_the_queue_ends_the_association_wait() -> None:
    q: queue.Queue[int] = queue.Queue()
    t = _later(0.02, lambda: q.put(1))
    t0 = time.perf_counter()
    netpoll.wait_for_queue(q, 5.0)
    assert time.perf_counter() - t0 < 2.0
    assert q.get_nowait() == 1  # the wait takes nothing
    t.join()


def test_closed_socket_does_not_raise(pair: tuple[socket.socket, socket.socket]) -> None:
    waker = netpoll.Waker()
    pair[0].close()
    netpoll.wait_readable(pair[0], waker, 0.01)
    netpoll.wait_readable(None, waker, 0.01)
    waker.close()
    waker.wake()  # after close: nothing happens


def test_install_replaces_sleep_in_both_reactors_only() -> None:
    from pynetdicom import association, dul

    install_reactor_waits()
    assert dul.time.sleep is association.time.sleep
    assert dul.time.sleep is not time.sleep
    assert dul.time.monotonic is time.monotonic  # everything else is the real time module
    t0 = time.perf_counter()
    dul.time.sleep(0.05)  # not a reactor thread: an ordinary sleep
    assert time.perf_counter() - t0 >= 0.045
