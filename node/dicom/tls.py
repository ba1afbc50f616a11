"""DICOM TLS (PS3.15 Annex B, BCP 195 profile): SSL contexts for the SCP and the SCU, and a server that does
the TLS handshake in the per-connection thread.

pynetdicom's ``AssociationServer.get_request`` wraps the accepted socket with ``ssl_context.wrap_socket``,
which performs the handshake right there, in the accept loop: one client that opens a TCP connection and
never sends a ClientHello blocks every new association until the network timeout. The listener's server class
(:func:`node.dicom.pynetdicom_patches.make_tls_server_class`) accepts plain sockets and performs the handshake in
the thread that serves the connection, bounded by ``handshake_timeout_seconds``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any, Callable

from node.config import ConfigError, NodeConfig, TlsClientSection, TlsServerSection
from node.dicom.pynetdicom_patches import HandshakeFailed, make_tls_server_class, track_server

log = logging.getLogger(__name__)

# BCP 195 (RFC 9325 / RFC 7525) TLS 1.2 suites, as DICOM's "BCP 195 TLS Secure Transport Connection Profile"
# lists them; TLS 1.3 suites are all AEAD and always allowed by OpenSSL.
BCP195_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
])

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def harden(ctx: ssl.SSLContext, min_version: str) -> ssl.SSLContext:
    """BCP 195 on ``ctx``: at least ``min_version``, the AEAD suites above, no compression, no renegotiation."""
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


def _load(where: str, what: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(a) for a in args if a)
        raise ConfigError(f"{where}: cannot load {what} ({files}): {exc.strerror or exc}") from None


def server_context(cfg: TlsServerSection) -> ssl.SSLContext:
    """The SCP's context: this node's certificate; client certificates verified against ``ca_file``."""
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cfg.min_version)
    _load("node.tls", "cert_file/key_file", ctx.load_cert_chain, str(cfg.cert_file), str(cfg.key_file))
    if cfg.ca_file is not None:
        _load("node.tls", "ca_file", ctx.load_verify_locations, str(cfg.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else (
        ssl.CERT_OPTIONAL if cfg.ca_file is not None else ssl.CERT_NONE)
    return ctx


def https_server_context(cert_file: Path, key_file: Path, min_version: str) -> ssl.SSLContext:
    """The HTTP side's HTTPS context (``http.tls``): the same BCP 195 settings as DICOM TLS, ALPN HTTP/1.1."""
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), min_version)
    _load("http.tls", "cert_file/key_file", ctx.load_cert_chain, str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_context(cfg: TlsClientSection) -> ssl.SSLContext:
    """The SCU's context toward one destination: its certificate must chain to ``ca_file``."""
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cfg.min_version)
    _load("destination tls", "ca_file", ctx.load_verify_locations, str(cfg.ca_file))
    ctx.check_hostname = cfg.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cfg.cert_file is not None and cfg.key_file is not None:
        _load("destination tls", "cert_file/key_file", ctx.load_cert_chain, str(cfg.cert_file), str(cfg.key_file))
    return ctx


def check_tls_files(cfg: NodeConfig) -> list[str]:
    """Build every TLS context of the configuration (raises ConfigError naming the key); one line per context."""
    lines = []
    if cfg.node.tls is not None:
        server_context(cfg.node.tls)
        lines.append(f"DICOM TLS on port {cfg.node.tls.port} ({cfg.node.tls.min_version}+, client certificate "
                     f"{'required' if cfg.node.tls.require_client_cert else 'optional'})")
    for name, dest in cfg.destinations.items():
        if dest.tls is not None:
            try:
                client_context(dest.tls)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("destination tls", f"destinations.{name}.tls")) from None
            lines.append(f"destination {name}: DICOM TLS ({dest.tls.min_version}+)")
    if cfg.http.tls is not None:
        https_server_context(cfg.http.tls.cert_file, cfg.http.tls.key_file, cfg.http.tls.min_version)
        lines.append(f"HTTP side: HTTPS ({cfg.http.tls.min_version}+)")
    if cfg.mllp is not None and cfg.mllp.tls is not None:  # the HL7 v2 listener (node/hl7/listener.py)
        try:
            server_context(cfg.mllp.tls)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("node.tls", "mllp.tls")) from None
        lines.append(f"MLLP over TLS on port {cfg.mllp.port} ({cfg.mllp.tls.min_version}+)")
    return lines


def client_tls_args(cfg: TlsClientSection | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """``tls_args`` for ``AE.associate``: (context, the name the peer's certificate must carry)."""
    if cfg is None:
        return None
    return client_context(cfg), cfg.server_name or host


def start_tls_listener(ae: Any, host: str, cfg: TlsServerSection, handlers: list, base: type,
                       on_failure: HandshakeFailed | None = None) -> Any:
    """Start the DICOM TLS listener of ``ae`` on ``cfg.port`` in a background thread; returns the server."""

    server_class = make_tls_server_class(base, server_context(cfg), cfg.handshake_timeout_seconds, on_failure)
    server = ae.make_server((host, cfg.port), evt_handlers=handlers, server_class=server_class)
    track_server(ae, server)  # so AE.shutdown() finds it (and server.shutdown() can remove it)
    threading.Thread(target=server.serve_forever, name="storage-scp-tls", daemon=True).start()
    log.info("Storage SCP (DICOM TLS, %s+) listening on %s:%s", cfg.min_version, host, server.server_address[1])
    return server
