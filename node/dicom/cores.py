"""How many receiver processes to run when ``node.receivers`` is not set: from the cores this node may use.

One receiving process is bound by its GIL (pynetdicom and the node's own per-instance work run in Python), so with
parallel senders each receiver can keep about one core busy. The rest of the node needs cores too: the worker
(conversion, model calls), the HTTP side, and the kernel's share of every instance (loopback or NIC, fsync).
And each receiver costs ~120 MB of memory (measured with `bench ingest`) and shares the port with SO_REUSEPORT. So:

* fewer than 4 usable cores: 1 receiver (the port bound exclusively, memory as before);
* otherwise half of them, at most :data:`MAX_AUTO_RECEIVERS` (4 cover four parallel senders; set
  ``node.receivers`` explicitly for more).

"Usable" is the CPU affinity of the process, further limited by a cgroup v2 CPU quota (``cpu.max``, as a
container's ``--cpus`` sets it); both are fixed for the life of the node, so every receiver process computes the
same number. The machine's load is deliberately not used: it changes from one start to the next.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

MIN_CORES_FOR_SEVERAL = 4
MAX_AUTO_RECEIVERS = 4
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by the cgroup v2 quota when one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def auto_receivers(cores: int | None = None) -> int:
    """The default of ``node.receivers`` for ``cores`` usable cores (see the module docs)."""
    n = usable_cores() if cores is None else cores
    if n < MIN_CORES_FOR_SEVERAL:
        return 1
    return min(MAX_AUTO_RECEIVERS, n // 2)
