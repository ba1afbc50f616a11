"""Lines of the trail in, syslog messages out, with the trail position that makes a restart exact.

The position (``cursor``, written into the spool with the messages it produced, :mod:`node.audit.spool`) is:

* ``inode``, ``resume``: where to read from after a restart: the first line of the oldest transfer still open
  (its instances must be gathered again), else where reading stopped;
* ``done``: every line before it has made its messages, so lines between ``resume`` and ``done`` are read
  again only to gather instances: they make nothing, and a transfer they close was sent before;
* ``expired``: transfers closed by a timeout (no end line) lately, so that reading their lines again makes
  nothing twice.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from node.audit import events, rfc5424, transfers, workflow_events
from node.audit.xmlbuild import AuditMessage

log = logging.getLogger(__name__)

MAX_EXPIRED = 2000
#: the function making the messages of each event that makes its own (the workflow events: node/audit/workflow_events)
CONVERTERS = {**events.CONVERTERS, **workflow_events.CONVERTERS}


class Converter:
    """Turns trail lines into RFC 5424 messages (bytes, unframed), keeping the state a restart needs."""

    def __init__(self, ctx: events.Context, app_name: str, cursor: dict[str, Any] | None,
                 forget_patient: Any = None) -> None:
        self.ctx = ctx
        self.app_name = app_name
        self.transfers = transfers.Transfers()
        cursor = cursor or {}
        self.done = int(cursor.get("done", 0))
        self.expired: list[list] = [list(x) for x in cursor.get("expired", [])]
        self.forget_patient = forget_patient or (lambda uid: None)
        self.host = socket.gethostname()

    def feed(self, offset: int, ev: dict[str, Any]) -> list[bytes]:
        """The messages one line makes (none for a line read again below ``done``, or that only gathers)."""
        kind = ev.get("event")
        if kind in ("association-start", "instance-received", "association-end"):
            if kind == "instance-received" and self._was_expired(ev, offset):
                return []
            out = []
            for t, end in self.transfers.feed(ev, offset):
                if offset >= self.done:
                    out += self._syslog(transfers.messages(self.ctx, t, end), end)
            return out
        if offset < self.done:
            return []
        try:
            if kind == "instance-quarantined":
                made = _quarantined(self.ctx, ev)
            elif kind in CONVERTERS:
                made = CONVERTERS[kind](self.ctx, ev)
            else:
                return []  # details of another event (results-rejected, study-rerun), or an unknown kind
        except Exception:  # noqa: BLE001 - one odd line must not stop the trail
            log.exception("audit: cannot make the ATNA message of a %s line at byte %d; skipped", kind, offset)
            return []
        if kind == "study-deleted":
            self.forget_patient(ev.get("study_uid"))
        return self._syslog(made, ev)

    def expire(self) -> list[bytes]:
        """Messages of transfers that closed by a timeout (the receiving process died, a STOW-RS burst ended)."""
        out = []
        for t in self.transfers.expired():
            self.expired.append([list(t.key), t.first_offset, t.last_offset])
            out += self._syslog(transfers.messages(self.ctx, t, None), t.first)
        del self.expired[:-MAX_EXPIRED]
        return out

    def rebase(self) -> None:
        """The trail was rotated: offsets from now on are the new file's (open transfers resume from its start)."""
        self.done = 0
        self.expired = []
        for t in self.transfers.open.values():
            t.first_offset = t.last_offset = 0

    def cursor(self, inode: int | None, read_to: int) -> dict[str, Any]:
        """The position to write with the messages made so far; lines before ``read_to`` made theirs."""
        self.done = max(self.done, read_to)
        oldest = self.transfers.oldest_offset()
        resume = min(read_to, oldest) if oldest is not None else read_to
        self.expired = [x for x in self.expired if x[2] >= resume]
        return {"inode": inode, "resume": resume, "done": self.done, "expired": self.expired}

    def _was_expired(self, ev: dict[str, Any], offset: int) -> bool:
        key = [ev.get("pid"), ev.get("peer_host"), ev.get("peer_port")]
        for k, first, last in self.expired:
            stow = k[1] == "STOW-RS" and k[0] == ev.get("pid") and ev.get("peer_port") is None
            if first <= offset <= last and (k == key or stow):
                return True
        return False

    def _syslog(self, made: list[AuditMessage], ev: dict[str, Any]) -> list[bytes]:
        out = []
        for msg in made:
            xml = msg.to_bytes()
            if len(xml) + 200 > self.ctx.max_bytes:
                log.error("audit: an ATNA %s message is %d bytes, over audit.syslog.max_message_bytes (%d): the "
                          "repository may cut it", msg.event_id[2], len(xml), self.ctx.max_bytes)
            out.append(rfc5424.message(xml, timestamp=msg.when, hostname=ev.get("node_host") or self.host,
                                       app_name=self.app_name, procid=ev.get("pid") or os.getpid(),
                                       outcome=msg.outcome))
        return out


def _quarantined(ctx: events.Context, ev: dict[str, Any]) -> list[AuditMessage]:
    """An instance refused and kept aside: a DICOM Instances Transferred with outcome 4 (minor failure)."""
    from node.audit import xmlbuild as x

    sop = ev.get("sop_instance_uid") or "(no SOP Instance UID)"
    msg = events.new(ctx, ev, x.INSTANCES_TRANSFERRED, "C",
                     description=f"instance {sop} refused with status {ev.get('status', '?')} and quarantined")
    events.peer(msg, ev.get("calling_ae"), ev.get("peer_host"), [x.SOURCE], True)
    events.node(msg, ctx, ev, [x.DESTINATION, x.APPLICATION], False)
    if ev.get("study_uid"):
        events.study(msg, ev["study_uid"])
        events.patient(msg, ctx, ev["study_uid"])
    return [msg]
