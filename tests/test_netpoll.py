"""node.dicom.netpoll: pynetdicom's reactors poll fast while an association is busy and as before once it is idle."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from node.dicom import netpoll
from node.dicom.pynetdicom_patches import install_adaptive_polling


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(netpoll, "_time", SimpleNamespace(perf_counter=fake.perf_counter, sleep=fake.sleep))
    monkeypatch.setattr(netpoll, "_state", threading.local())
    monkeypatch.setattr(netpoll, "_last_work", {})
    return fake


def test_idle_loop_keeps_pynetdicoms_delay(clock: FakeClock) -> None:
    for _ in range(10):
        netpoll.adaptive_sleep(0.001)
    assert clock.slept == [0.001] * 10  # a thread that never worked polls as pynetdicom does


def test_work_makes_the_next_polls_fast_until_the_loop_is_idle_again(clock: FakeClock) -> None:
    netpoll.adaptive_sleep(0.001)
    clock.now += 0.005  # the loop did 5 ms of work (a PDU, a handler) before sleeping again
    clock.slept.clear()
    for _ in range(netpoll.FAST_STREAK + 5):
        netpoll.adaptive_sleep(0.001)
    assert clock.slept[:netpoll.FAST_STREAK] == [netpoll.FAST_SLEEP] * netpoll.FAST_STREAK
    assert clock.slept[netpoll.FAST_STREAK:] == [0.001] * 5


def test_several_busy_associations_keep_pynetdicoms_delay(clock: FakeClock) -> None:
    """Beyond one association's two threads, fast polling would only fight over the GIL."""
    clock.now = 10.0
    for ident in (1, 2, 3):  # three other reactor threads worked just now
        netpoll._last_work[ident] = clock.now
    netpoll.adaptive_sleep(0.001)
    clock.now += 0.005
    clock.slept.clear()
    netpoll.adaptive_sleep(0.001)
    assert clock.slept == [0.001]


def test_install_replaces_sleep_in_both_reactors_only() -> None:
    import time

    from pynetdicom import association, dul

    install_adaptive_polling()
    assert dul.time.sleep is netpoll.adaptive_sleep
    assert association.time.sleep is netpoll.adaptive_sleep
    assert dul.time.monotonic is time.monotonic  # everything else is the real time module
    assert time.sleep is not netpoll.adaptive_sleep
