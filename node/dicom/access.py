"""Who may talk to the Storage SCP, and the audit events of what they did.

* Calling AE title allowlist (``node.allowed_calling_ae_titles``) and, per AE title, the hosts it may connect
  from (``node.allowed_hosts``: addresses or networks). Checked on EVT_REQUESTED, before negotiation; a refused
  association gets A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised) and a
  Security Alert in the audit trail.
* The DICOM TLS listener (``node.tls``) beside the plain one, handshaking in the connection's own thread.
* Audit events of associations and instances (:mod:`node.ops.audit`; ATNA: :mod:`node.audit`).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from typing import Any

from pynetdicom import evt

from node.ops import metrics
from node.ops.audit import AuditLog
from node.config import NodeConfig

log = logging.getLogger(__name__)

REJECT_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def _peer(assoc: Any) -> dict[str, Any]:
    req = assoc.requestor
    return {"calling_ae": str(req.ae_title).strip(), "called_ae": str(assoc.acceptor.ae_title).strip(),
            "peer_host": req.address, "peer_port": req.port}


def _tls_info(assoc: Any) -> dict[str, Any]:
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return {"tls": False}
    info: dict[str, Any] = {"tls": True, "tls_version": sock.version()}
    cert = sock.getpeercert() or {}
    subject = dict(part for rdn in cert.get("subject", ()) for part in rdn)
    if subject.get("commonName"):
        info["peer_certificate_cn"] = subject["commonName"]
    return info


class ScpSecurity:
    """Access checks and audit events for one Storage SCP."""

    def __init__(self, cfg: NodeConfig, audit: AuditLog) -> None:
        self.cfg = cfg
        self.audit = audit
        self.allowed_aes = {a.strip() for a in cfg.node.allowed_calling_ae_titles}
        self.allowed_hosts = {ae.strip(): [ipaddress.ip_network(n, strict=False) for n in nets]
                              for ae, nets in cfg.node.allowed_hosts.items()}
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def refusal(self, calling_ae: str, host: str) -> str | None:
        """Why an association from ``calling_ae`` at ``host`` is refused, or None when it is allowed."""
        calling_ae = calling_ae.strip()
        if self.allowed_aes and calling_ae not in self.allowed_aes:
            return "calling AE title not in allowed_calling_ae_titles"
        nets = self.allowed_hosts.get(calling_ae)
        if nets is not None:
            try:
                addr = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                return "peer address not understood"
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            if not any(addr in net for net in nets):
                return "host not in allowed_hosts for this calling AE title"
        return None

    # Event handlers ------------------------------------------------------------------------------------
    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_ACCEPTED, self.on_accepted),
                (evt.EVT_RELEASED, self.on_ended), (evt.EVT_ABORTED, self.on_ended)]

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = assoc.requestor.address
        why = self.refusal(calling_ae, host)
        if why is None:
            return
        log.warning("association from %s (%s) refused: %s", calling_ae, host, why)
        # an AE title outside the allow-list is not a label: anyone could mint unbounded series with it
        metrics.association(calling_ae if calling_ae in self.allowed_aes else "(not allowed)", accepted=False)
        self.audit.record("association-rejected", "serious-failure", calling_ae=calling_ae, peer_host=host,
                          peer_port=assoc.requestor.port, reason=why, **_tls_info(assoc))
        assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNISED)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # as pynetdicom's own rejection does: waits until the A-ASSOCIATE-RJ has gone out

    def on_accepted(self, event: evt.Event) -> None:
        with self._lock:
            self._counts[id(event.assoc)] = 0
        metrics.association(str(event.assoc.requestor.ae_title).strip(), accepted=True)
        self.audit.record("association-start", **_peer(event.assoc), **_tls_info(event.assoc))

    def on_ended(self, event: evt.Event) -> None:
        with self._lock:
            count = self._counts.pop(id(event.assoc), None)
        if count is None:
            return  # never accepted (rejected, or aborted during negotiation): nothing to close
        how = "released" if event.event == evt.EVT_RELEASED else "aborted"
        self.audit.record("association-end", "success" if how == "released" else "minor-failure",
                          **_peer(event.assoc), ended=how, instances_received=count)

    def instance_received(self, event: evt.Event, study_uid: str, series_uid: str, sop_uid: str,
                          sop_class: str) -> None:
        with self._lock:
            key = id(event.assoc)
            if key in self._counts:
                self._counts[key] += 1
        req = event.assoc.requestor  # (pid, peer address, port): the association the ATNA transfer gathers by
        self.audit.record("instance-received", calling_ae=str(req.ae_title).strip(), peer_host=req.address,
                          peer_port=req.port, study_uid=study_uid, series_uid=series_uid,
                          sop_instance_uid=sop_uid, sop_class_uid=sop_class)

    def instance_quarantined(self, calling_ae: str, sop_uid: str | None, status: int) -> None:
        self.audit.record("instance-quarantined", "minor-failure", calling_ae=calling_ae, sop_instance_uid=sop_uid,
                          status=f"0x{status:04X}")

    def tls_failure(self, client_address: tuple, reason: str) -> None:
        self.audit.record("tls-failure", "serious-failure", peer_host=client_address[0],
                          peer_port=client_address[1], reason=reason)
