"""``dicom-node healthcheck``: the container's HEALTHCHECK (exit 0 healthy, 1 not), from inside the container.

With the HTTP side on, the node is healthy when ``/readyz`` answers 200 (database writable, spool above the
floor, queue reachable, worker alive). Without it, when the Storage SCP answers a C-ECHO (called as the first
of ``node.allowed_calling_ae_titles`` when there is an allow-list).
"""

from __future__ import annotations

import sys

from node.config import NodeConfig


def healthcheck(cfg: NodeConfig, timeout: float = 10.0) -> int:
    """0 when the node is ready, 1 otherwise (the reason on stderr)."""
    if cfg.http.port is not None:
        import httpx

        host = "127.0.0.1" if cfg.http.host in ("0.0.0.0", "::") else cfg.http.host
        scheme = "https" if cfg.http.tls is not None else "http"
        try:
            # the node asking itself over loopback: its certificate names the public host, not this address
            reply = httpx.get(f"{scheme}://{host}:{cfg.http.port}/readyz", timeout=timeout, verify=False)
        except httpx.HTTPError as exc:
            print(f"HTTP side not answering: {type(exc).__name__}", file=sys.stderr)
            return 1
        if reply.status_code != 200:
            print(f"not ready: {reply.text}", file=sys.stderr)
            return 1
        return 0
    from pynetdicom import AE

    # With an allow-list, an unknown calling AE title is rejected (and audited as a serious failure): the probe
    # calls as the first allowed title, from inside the node's own host or container.
    allowed = cfg.node.allowed_calling_ae_titles
    ae = AE(ae_title=allowed[0] if allowed else "HEALTHCHECK")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = timeout
    host = "127.0.0.1" if cfg.node.host in ("0.0.0.0", "::") else cfg.node.host
    assoc = ae.associate(host, cfg.node.port, ae_title=cfg.node.ae_title)
    if assoc.is_rejected:
        print(f"the Storage SCP at {host}:{cfg.node.port} rejected the association", file=sys.stderr)
        return 1
    if not assoc.is_established:
        print(f"the Storage SCP at {host}:{cfg.node.port} did not answer an association", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    if not status or status.Status != 0:
        print(f"the Storage SCP answered the C-ECHO with {status.Status if status else 'nothing'}", file=sys.stderr)
        return 1
    return 0
