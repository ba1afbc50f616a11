"""Fault-injection points for the fault-tolerance tests: named places where the node can be told to pause.

``DICOM_NODE_FAILPOINTS="converted=30,results_written=30"`` makes the node log ``failpoint NAME reached`` and
sleep that many seconds when it passes NAME, so that a test can SIGKILL it at exactly that moment. Without the
variable (production) a failpoint costs one dictionary look-up. The names:

* ``decided``: a quiet study is closed (a new version), its jobs not yet created;
* ``converted``: the job's images are converted, the endpoint not yet called;
* ``results_written``: the result files are on disk, the job and its outbox rows not yet committed;
* ``delivering``: outbox rows are claimed (marked in flight), no C-STORE sent yet;
* ``commitment_requested``: the PACS accepted a Storage Commitment request, its report not yet seen;
* ``workitem_claim_answered``: a UPS workitem's claim was answered, the answer not yet recorded (node/ups);
* ``workitem_reported``: a workitem's outputs were reported (Update Workitem), COMPLETED not yet asked for;
* ``workitem_final_answered``: the worklist accepted COMPLETED (or CANCELED), the node has not recorded it yet.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

ENV = "DICOM_NODE_FAILPOINTS"


def _parse(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, _, seconds = part.strip().partition("=")
        if name:
            try:
                out[name] = float(seconds or 0)
            except ValueError:
                log.warning("ignoring failpoint %r: the pause is not a number", part)
    return out


_POINTS = _parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    """Pause here when the environment names this point (tests only)."""
    seconds = _POINTS.get(name)
    if seconds is None:
        return
    log.warning("failpoint %s reached: pausing %.1f s", name, seconds)
    time.sleep(seconds)
