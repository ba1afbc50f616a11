"""One configured DICOMweb service (destination or source) as an :class:`httpx.Client` with its credentials.

``auth: none | basic | bearer | entra``: basic reads the password from ``password_env``, bearer the token from
``token_env`` (both at every request, so a rotated secret is seen), entra asks azure-identity for a token of
``scope`` (default: the Azure DICOM service's) and caches it (:mod:`node.invoke.auth`). Secrets are never logged.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx

from node.config_sections import AZURE_DICOM_SCOPE, DicomWebAuth
from node.invoke.auth import AuthError, Authenticator, KeyAuth, NoAuth, TokenAuth, default_credential, token_cache_for


class _BasicAuth:
    """``Authorization: Basic`` from a user name and a password held in an environment variable."""

    def __init__(self, user: str, password_env: str) -> None:
        self.user = user
        self.password_env = password_env

    def headers(self) -> dict[str, str]:
        password = os.environ.get(self.password_env)
        if not password:
            raise AuthError(f"the environment variable {self.password_env} (password_env) is empty", permanent=True)
        raw = base64.b64encode(f"{self.user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}

    def invalidate(self) -> None:
        pass


def _env_secret(name: str) -> Any:
    def read() -> str:
        value = os.environ.get(name)
        if not value:
            raise AuthError(f"the environment variable {name} (token_env) is empty", permanent=True)
        return value

    return read


def authenticator(section: DicomWebAuth, credential: Any = None) -> Authenticator:
    """The :class:`Authenticator` of a DICOMweb destination or source."""
    if section.auth == "basic":
        return _BasicAuth(str(section.user), str(section.password_env))
    if section.auth == "bearer":
        return KeyAuth(_env_secret(str(section.token_env)))
    if section.auth == "entra":
        return TokenAuth(token_cache_for(credential or default_credential(), section.scope or AZURE_DICOM_SCOPE))
    return NoAuth()


class _HttpxAuth(httpx.Auth):
    """Adds the authenticator's header to every request; a 401 drops a cached token for the next request."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def auth_flow(self, request: httpx.Request):  # type: ignore[override]
        request.headers.update(self.auth.headers())
        response = yield request
        if response.status_code == 401:
            self.auth.invalidate()


def base_url(section: DicomWebAuth) -> str:
    """The service's base URL without a trailing slash."""
    return str(section.url).rstrip("/")


def client_for(section: DicomWebAuth, timeout: float, credential: Any = None) -> httpx.Client:
    """An HTTP client for the service: its credentials, TLS verification and timeout.

    The environment's proxy settings apply except for a loopback service (a local peer or the emulator).
    """
    host = httpx.URL(base_url(section)).host
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return httpx.Client(auth=_HttpxAuth(authenticator(section, credential)), verify=section.verify_tls,
                        timeout=httpx.Timeout(timeout), trust_env=not loopback, follow_redirects=False)
