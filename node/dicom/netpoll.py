"""Adaptive polling for pynetdicom's reactor threads.

pynetdicom 3 runs two polling loops per association: the DUL thread sleeps 1 ms whenever the socket has nothing
and no primitive waits to be sent, and the association thread sleeps 1 ms before every look at the DIMSE queue.
One C-STORE crosses those loops three times (request complete -> handler -> response sent -> next request
seen), so on one association about 3 ms of every instance were spent asleep: profiled (py-spy, a no-op handler,
1,024 CT slices) the DUL thread slept ~60 % and the association thread ~80 % of the wall time, at ~240
instances/s where dcmtk's storescp takes ~600.

This module is the policy; :func:`node.dicom.pynetdicom_patches.install_adaptive_polling` installs it. It gives those loops a sleep that stays short (0.1 ms) while an association is busy and falls back
to pynetdicom's own 1 ms once it has been idle for a while, so an idle association costs what it did before.
"Busy" is read from the loop itself: when more than ``WORK_GAP`` passed between the end of one sleep and the
next call, the thread did work in between.

Fast polling is for one busy association at a time (its two reactor threads): with several busy associations,
sixteen threads waking every 0.1 ms fight over the GIL and the whole process gets slower (measured: 4
associations, no-op handler, ~1.4x the CPU per instance), so beyond ``MAX_FAST_THREADS`` recently busy threads
every loop keeps pynetdicom's 1 ms, as before.
"""

from __future__ import annotations

import threading
import time as _time

FAST_SLEEP = 0.0001  # seconds, while busy
WORK_GAP = 0.0002  # a loop iteration longer than this did some work
FAST_STREAK = 200  # idle iterations polled fast after the last work (~20-40 ms), then pynetdicom's own delay
MAX_FAST_THREADS = 2  # one association's DUL and association threads
BUSY_WINDOW = 0.05  # a thread that worked within this many seconds counts as busy

_state = threading.local()
_last_work: dict[int, float] = {}  # thread ident -> when it last did work (perf_counter)


def _few_busy(now: float) -> bool:
    busy = sum(1 for t in list(_last_work.values()) if now - t < BUSY_WINDOW)
    if len(_last_work) > 256:  # forget threads of finished associations
        for ident, t in list(_last_work.items()):
            if now - t > 1.0:
                _last_work.pop(ident, None)
    return busy <= MAX_FAST_THREADS


def adaptive_sleep(seconds: float) -> None:
    """``time.sleep`` for pynetdicom's reactors: short while busy, unchanged once idle (see the module docs)."""
    now = _time.perf_counter()
    last = getattr(_state, "last", 0.0)
    streak = getattr(_state, "streak", FAST_STREAK)
    if now - last > WORK_GAP:
        streak = 0
        _last_work[threading.get_ident()] = now
    else:
        streak += 1
    _state.streak = streak
    fast = streak < FAST_STREAK and _few_busy(now)
    _time.sleep(min(seconds, FAST_SLEEP) if fast else seconds)
    _state.last = _time.perf_counter()
