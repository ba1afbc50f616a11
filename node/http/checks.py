"""What ``dicom-node check-config`` and ``serve`` check of the HTTP side's security before anything listens: the
environment variables ``http.oidc`` names are set (the certificate and key of ``http.tls`` are loaded by
:func:`node.dicom.tls.check_tls_files`)."""

from __future__ import annotations

import os

from node.config import ConfigError, NodeConfig


def check_http_auth(cfg: NodeConfig) -> list[str]:
    """One line describing sign-in when ``http.oidc`` is set; ConfigError naming the key of an unset variable."""
    oidc = cfg.http.oidc
    if oidc is None or cfg.http.port is None:
        return []
    for key in ("client_secret_env", "session_secret_env"):
        name = getattr(oidc, key)
        if name is not None and not os.environ.get(name):
            raise ConfigError(f"http.oidc.{key}: the environment variable {name} is not set")
    return [f"HTTP side: sign-in and machine tokens through {oidc.issuer} (client {oidc.client_id}, "
            f"{len(oidc.role_map)} role mapping(s))"]
