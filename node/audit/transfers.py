"""Instances received, gathered per association and study into DICOM Instances Transferred messages (110104).

IHE practice: one message per study per association, made when the transfer completes, not one per instance.
The receive path writes one JSON line per instance (as before); this module, in the forwarder's process, adds
each line to the transfer it belongs to and closes the transfer on its ``association-end`` line:

* a Storage SCP association is (recording process, peer address, peer port), from ``association-start`` to
  ``association-end``; when that process dies without writing the end (SIGKILL), the transfer closes once the
  process is gone and :data:`DEAD_AFTER_SECONDS` passed, or after :data:`STALE_AFTER_SECONDS` without a line;
* STOW-RS has no association: a burst of one HTTP process's instances closes after :data:`STOW_IDLE_SECONDS`
  without a new one.

Each transfer remembers the offset of its first line in the trail, so the forwarder resumes reading there
after a restart and loses no open transfer (:mod:`node.audit.forwarder`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from node.audit import events as e
from node.audit import xmlbuild as x
from node.audit.xmlbuild import AuditMessage

STOW_IDLE_SECONDS = 2.0
DEAD_AFTER_SECONDS = 5.0
STALE_AFTER_SECONDS = 3600.0
#: room for everything but the instance list (participants, patient, syslog header): measured below 3 KiB
HEADROOM_BYTES = 4096
INSTANCE_ELEMENT_BYTES = 90  # <Instance UID="..."/> with a 64-character UID


@dataclass
class Transfer:
    key: tuple
    first_offset: int
    first: dict[str, Any]  # the line that opened it (association-start, or the first instance)
    studies: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # study -> SOP class -> instances
    seen: float = field(default_factory=time.monotonic)
    last_offset: int = 0

    def add(self, ev: dict[str, Any], offset: int) -> None:
        by_class = self.studies.setdefault(ev["study_uid"], {})
        by_class.setdefault(ev.get("sop_class_uid") or "", []).append(ev["sop_instance_uid"])
        self.seen = time.monotonic()
        self.last_offset = offset


def _key(ev: dict[str, Any]) -> tuple | None:
    if ev.get("peer_port") is not None:
        return (ev.get("pid"), ev.get("peer_host"), ev.get("peer_port"))
    return None


class Transfers:
    """Open transfers; :meth:`feed` returns those a line closed, :meth:`expired` those that timed out."""

    def __init__(self) -> None:
        self.open: dict[tuple, Transfer] = {}

    def feed(self, ev: dict[str, Any], offset: int) -> list[tuple[Transfer, dict[str, Any]]]:
        kind = ev.get("event")
        key = _key(ev)
        if kind == "association-start" and key is not None:
            self.open[key] = Transfer(key, offset, ev)
        elif kind == "instance-received":
            if key is None:  # STOW-RS (or a line of an older node without the peer's port)
                key = next((k for k in self.open if k[0] == ev.get("pid") and k[1] == "STOW-RS"), None)
                key = key or (ev.get("pid"), "STOW-RS", offset)
            if key not in self.open:
                self.open[key] = Transfer(key, offset, ev)
            self.open[key].add(ev, offset)
        elif kind == "association-end" and key is not None and key in self.open:
            return [(self.open.pop(key), ev)]
        return []

    def expired(self, now: float | None = None) -> list[Transfer]:
        now = time.monotonic() if now is None else now
        out = []
        for key, t in list(self.open.items()):
            idle = now - t.seen
            stow = len(key) == 3 and key[1] == "STOW-RS"
            if (stow and idle >= STOW_IDLE_SECONDS) or idle >= STALE_AFTER_SECONDS or \
                    (not stow and idle >= DEAD_AFTER_SECONDS and not _alive(key[0])):
                out.append(self.open.pop(key))
        return out

    def oldest_offset(self) -> int | None:
        return min((t.first_offset for t in self.open.values()), default=None)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def messages(ctx: e.Context, t: Transfer, end: dict[str, Any] | None) -> list[AuditMessage]:
    """One 110104 per study of the transfer; ``end``: its association-end line (None: closed by a timeout)."""
    last = end or t.first
    out = []
    for study_uid, by_class in t.studies.items():
        ev = {**t.first, "time": (end or {}).get("time") or last["time"], "outcome": 0}
        desc = None if end is not None else "transfer closed without its end (the receiving process stopped)"
        msg = e.new(ctx, ev, x.INSTANCES_TRANSFERRED, "C", description=desc)
        if t.key[1] == "STOW-RS":  # an HTTP client of the node's STOW-RS service, not a DICOM AE
            msg.participant("STOW-RS client", True, [x.SOURCE], access_point=t.first.get("peer_host"))
        else:
            e.peer(msg, t.first.get("calling_ae"), t.first.get("peer_host"), [x.SOURCE], True)
        e.node(msg, ctx, ev, [x.DESTINATION, x.APPLICATION], False)
        e.study(msg, study_uid, _sop_classes(by_class, ctx.max_bytes - HEADROOM_BYTES))
        e.patient(msg, ctx, study_uid)
        out.append(msg)
    return out


def _sop_classes(by_class: dict[str, list[str]], room: int) -> list[x.SopClass]:
    """SOP classes with their instance UIDs while they fit in ``room`` bytes; counts only beyond."""
    total = sum(len(v) for v in by_class.values())
    listed = total * INSTANCE_ELEMENT_BYTES <= room
    return [x.SopClass(uid, len(uids), list(uids) if listed else []) for uid, uids in sorted(by_class.items())]
